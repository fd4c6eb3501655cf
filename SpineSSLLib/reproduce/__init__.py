"""The paper's learning-curve experiment (§4.2, Fig. 8) as one resumable command.

cohort (synthetic by default) -> index -> extract -> pretrain (longitudinal SSL) -> a supervised
source network on a second, disjoint, fully graded cohort -> grading splits -> for each
training-set size (the paper's 240 / 361 / 670 subjects, scaled; nested subsets) x each transfer
mode x each seed: train a grading model, test average class accuracy -> ``report.md`` with the
table (mean ± 95 % CI), naive baselines and a Fig.-8-style PNG.

Resumability: every stage has an output that marks it done (``volumes.csv``, a checkpoint, a
run's ``test_metrics.json``); a killed run is started again with the same command and skips what
is finished (an interrupted grading run resumes from its ``last/`` checkpoint).  ``state.json``
records each stage's wall time; ``results.csv`` is rewritten atomically after every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from ..errors import ConfigError


@dataclass
class ReproduceConfig:
    """A preset of the experiment (``small``: this 2-core CPU; ``paper``: a GPU)."""

    name: str = "small"
    subjects: int = 64
    """Subjects of the synthetic cohort (when no cohort folder is given)."""
    supervised_subjects: int = 32
    """Subjects of the second, disjoint, fully graded synthetic cohort (the supervised source)."""
    synth: dict = field(default_factory=dict)
    """``SynthConfig`` fields for both synthetic cohorts (beside subjects and seed)."""
    pretrain: dict = field(default_factory=dict)
    """``PretrainConfig`` values laid over its recipe (nested, e.g. ``{"train": {"max_epochs": 4}}``)."""
    grade: dict = field(default_factory=dict)
    """``GradeTrainConfig`` values for every grading run (nested, e.g. ``{"train": {"max_epochs": 6}}``);
    its ``model`` is the network of the scratch / frozen-random runs."""
    supervised_grade: dict = field(default_factory=dict)
    """``GradeTrainConfig`` values laid over ``grade`` for training the supervised source network."""
    modes: tuple = ("frozen-random", "scratch", "ssl-frozen", "ssl-finetune", "supervised")
    seeds: tuple = (0, 1, 2)
    paper_sizes: tuple = (240, 361, 670)
    split_seed: int = 0
    cohort_seed: int = 0
    eval_tta: bool = False
    compare_objective: bool = True
    """Also pretrain with the other pair objective (contrastive <-> NT-Xent) at equal compute (same
    epochs, batch, schedule) and report both (pair AUC, level accuracy, probes); grading uses the
    configured one."""

    aux_heads: dict = field(default_factory=dict)
    """Metadata heads (volumes.csv column -> classes, e.g. ``{"sex": 2, "age_bin": 5}``, issue #18):
    when set, a third pretraining with these heads beside the level head (otherwise the configured
    recipe, equal compute) and the learning-curve row ``ssl-aux-frozen`` (its frozen trunk)."""

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the default recipes (pretrain.RECIPES / grading.train.RECIPES["default"]) at sizes that fit
    # the 90-minute budget on 2 CPU cores (docs/reproduce-small/)
    "small": ReproduceConfig(
        name="small", subjects=64, supervised_subjects=32,
        pretrain={"model": {"preset": "small"}, "train": {"max_epochs": 24, "num_workers": 0}},
        grade={"model": {"preset": "small"}, "train": {"max_epochs": 8, "batch_size": 32, "num_workers": 0}},
        supervised_grade={"train": {"max_epochs": 16}},
    ),
    "paper": ReproduceConfig(
        name="paper", subjects=1016, supervised_subjects=500,
        pretrain={"recipe": "paper"},
        grade={"recipe": "paper"},
        eval_tta=True,
    ),
}


AUX_MODE = "ssl-aux-frozen"
"""The learning-curve row of the trunk pretrained with metadata heads (graded as ``ssl-frozen``)."""


def modes_for(cfg: ReproduceConfig) -> tuple:
    """The configured modes, plus ``ssl-aux-frozen`` when aux heads are set and it is not listed."""
    return tuple(cfg.modes) + ((AUX_MODE,) if cfg.aux_heads and AUX_MODE not in cfg.modes else ())


def preset(name: str, **overrides) -> ReproduceConfig:
    """A preset with some fields replaced (e.g. ``seeds=(0,)``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown reproduce preset {name!r} (choose from {', '.join(PRESETS)})")
    import copy

    return replace(copy.deepcopy(PRESETS[name]), **overrides)  # callers may change its dicts


@dataclass(frozen=True)
class RunSpec:
    size: int  # training subjects
    mode: str
    seed: int

    @property
    def key(self) -> str:
        return f"n{self.size:04d}-{self.mode}-s{self.seed}"


def plan(sizes: Sequence[int], modes: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
    """Every (size x mode x seed) run, smallest size first so early results are the most telling."""
    return [RunSpec(int(n), m, int(s)) for n in sorted(sizes) for s in seeds for m in modes]


from .baselines import disc_hand_features, run_baselines  # noqa: E402,F401 - the public names
from .report import ordering_check, paired_tests, summarise, write_report  # noqa: E402,F401
from .runner import Reproduction, _claim, _release  # noqa: E402,F401
