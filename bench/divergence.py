"""Where do two machines' demo runs first diverge: the data bytes, the warm start, or RL?

Prints, for this process's CPU kernels: the demo data's content hashes (they must equal
the ones pinned in tests/unit/test_synthetic.py on every machine), and the SHA-256 of the
tiny model's weights after its initialisation and after ``--steps`` warm-start steps,
with the machine fingerprint. Run it on two machines (or here under other kernel choices,
e.g. ``ATEN_CPU_CAPABILITY=avx2`` or ``--threads 1``) and compare the lines: the first hash
that differs is where the runs part.

    python bench/divergence.py --steps 20
    ATEN_CPU_CAPABILITY=avx2 python bench/divergence.py --steps 20
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "pilotcommit")

import torch  # noqa: E402
from _common import print_environment, print_table  # noqa: E402

from pilotcommit.config import demo_config_path, load_experiment_config  # noqa: E402
from pilotcommit.data.synthetic import content_hash, generate_arith_splits  # noqa: E402
from pilotcommit.models.tiny import build_tiny_model  # noqa: E402
from pilotcommit.models.tokenizer import build_char_tokenizer  # noqa: E402
from pilotcommit.models.warm_start import train_warm_start  # noqa: E402


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="warm-start steps to hash after")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_experiment_config(demo_config_path())
    train_df, test_df = generate_arith_splits(cfg.data.to_spec())
    rows = [("data: train", content_hash(train_df)[:16], ""), ("data: test", content_hash(test_df)[:16], "")]
    tokenizer = build_char_tokenizer()
    warm = cfg.model.warm_start.model_copy(update={"steps": args.steps})
    model = build_tiny_model(cfg.model, tokenizer, seed=warm.seed)
    rows.append(("initial weights", weights_hash(model), ""))
    train_df["level"] = train_df["level"].astype(int)
    losses = train_warm_start(model, tokenizer, train_df, warm)
    rows.append((f"weights after {args.steps} warm-start steps", weights_hash(model), f"{losses[-1]:.10f}"))
    print_table(("what", "SHA-256 (first 16 hex)", "loss"), rows)
    print_environment()


if __name__ == "__main__":
    main()
