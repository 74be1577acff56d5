"""The one configuration schema of the project (pydantic), validated at load time.

YAML files under ``conf/`` only supply values; every field, its bounds and its meaning live in
this package, one module per component:

    base.py        StrictModel (unknown keys are errors), ConfigError
    methods.py     GRPO, DAPO, Pilot-Commit (and its pass band), GRESO, SPEED-RL
    model.py       the tiny model and its warm start, pretrained models
    sections.py    learner, data, rollout, probe, eval, budget, checkpoint, target, tracking,
                   resources, train mix
    experiment.py  ExperimentConfig: the sections together, and the checks across them
    loading.py     YAML, references to other conf/ files, overrides, error messages, the hash
    sweep.py       sweep files and their cells (read with loading.py's functions)

An impossible combination fails when the file is loaded, with a message naming the file and the
field, before any data is read or any model is built. The names below are the package's API.
"""

from pilotcommit.config.base import ConfigError, StrictModel
from pilotcommit.config.experiment import ExperimentConfig
from pilotcommit.config.loading import (
    apply_overrides,
    conf_dir_of,
    config_hash,
    default_conf_dir,
    demo_config_path,
    load_experiment_config,
    read_yaml,
    resolve_references,
    validate_experiment,
)
from pilotcommit.config.methods import (
    METHOD_NAMES,
    PASS_RATE_TOLERANCE,
    DAPOConfig,
    GRESOConfig,
    GRPOConfig,
    MethodConfig,
    PilotCommitConfig,
    PilotVerdict,
    SpeedRLConfig,
    pass_band_verdict,
)
from pilotcommit.config.model import (
    ModelConfig,
    PretrainedModelConfig,
    TinyModelConfig,
    WarmStartConfig,
)
from pilotcommit.config.sections import (
    ArithDataConfig,
    ArithLevelConfig,
    BudgetConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    MathDataConfig,
    OverlongPenalty,
    ProbeConfig,
    ResourcesConfig,
    RolloutConfig,
    TargetConfig,
    TrackingConfig,
    TrainMixConfig,
    VLLMSettings,
)
from pilotcommit.config.sweep import (
    SweepConfig,
    cell_config,
    cell_configs,
    experiment_path,
    load_sweep_config,
)

__all__ = [
    "ArithDataConfig", "ArithLevelConfig", "BudgetConfig", "CheckpointConfig", "ConfigError", "DAPOConfig",
    "DataConfig", "EvalConfig", "ExperimentConfig", "GRESOConfig", "GRPOConfig", "LearnerConfig",
    "METHOD_NAMES", "MathDataConfig", "MethodConfig", "ModelConfig", "OverlongPenalty", "PASS_RATE_TOLERANCE",
    "PilotCommitConfig", "PilotVerdict", "PretrainedModelConfig", "ProbeConfig", "ResourcesConfig",
    "RolloutConfig", "SpeedRLConfig", "StrictModel", "SweepConfig", "TargetConfig", "TinyModelConfig",
    "TrackingConfig", "TrainMixConfig", "VLLMSettings", "WarmStartConfig", "apply_overrides", "cell_config",
    "cell_configs", "conf_dir_of", "config_hash", "default_conf_dir", "demo_config_path", "experiment_path",
    "load_experiment_config", "load_sweep_config", "pass_band_verdict", "read_yaml", "resolve_references",
    "validate_experiment",
]
