"""Prompt data: where problems come from and the one table shape they all end up in.

- ``specs``: ``DatasetSpec``, a hub dataset or local file and its column mapping (light:
  the experiment config imports it).
- ``loaders``: ``load_prompt_table(spec)`` -> a validated, de-duplicated prompt table.
- ``schema``: the table's pandera schema, the text rule for numeric cells, de-duplication.
- ``templates``: ``format_prompt``, the paper's boxed chain-of-thought prompt.
- ``synthetic``: the embedded arithmetic task.
- ``prepared``: ``PreparedData`` (the prepared files) and ``read_prompt_table``.

Submodules are imported where used, so importing this package stays cheap (no
``datasets``, pandas or torch).
"""
