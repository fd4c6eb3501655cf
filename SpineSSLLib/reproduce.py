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

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import write_csv, write_json, write_text
from .errors import ConfigError, SpineSSLError


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

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "small": ReproduceConfig(
        name="small", subjects=64, supervised_subjects=32,
        pretrain={"model": {"preset": "small"}, "train": {"max_epochs": 4, "lr": 0.01, "patience": 3,
                                                          "num_workers": 0, "optimizer": "sgd",
                                                          "schedule": "plateau", "weight_decay": 5e-4,
                                                          "grad_clip": 0.0, "warmup_epochs": 0.0},
                  "loss": {"objective": "contrastive", "normalize": False, "projection": 0}},
        grade={"model": {"preset": "small"},
               "train": {"max_epochs": 6, "patience": 3, "max_lr_drops": 1, "batch_size": 16, "lr": 1e-3,
                         "optimizer": "sgd", "schedule": "plateau", "weight_decay": 5e-4, "grad_clip": 0.0,
                         "warmup_epochs": 0.0, "num_workers": 0},
               "transfer": {"fc_init": "data"}},
        supervised_grade={"train": {"max_epochs": 10}},
    ),
    "paper": ReproduceConfig(
        name="paper", subjects=1016, supervised_subjects=500,
        pretrain={"recipe": "paper"},
        grade={"recipe": "paper"},
        eval_tta=True,
    ),
}


def preset(name: str, **overrides) -> ReproduceConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown reproduce preset {name!r} (choose from {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


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


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------

class Reproduction:
    """One experiment folder ``out``; ``run()`` does (or finishes) everything."""

    def __init__(self, out: str | os.PathLike, config: ReproduceConfig, cohort: str | os.PathLike | None = None,
                 supervised_cohort: str | os.PathLike | None = None, levels: str | None = None,
                 supervised_levels: str | None = None, log=print):
        """``levels`` / ``supervised_levels``: the ``spine-ssl extract --levels KIND:FOLDER`` source
        of a user cohort (synthetic cohorts use their truth files)."""
        self.out = Path(out)
        self.levels = levels
        self.supervised_levels = supervised_levels
        self.cfg = config
        self.user_cohort = Path(cohort) if cohort else None
        self.user_supervised = Path(supervised_cohort) if supervised_cohort else None
        self.log = log
        self.state_path = self.out / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        saved = self.state.get("config")
        if saved and saved != json.loads(json.dumps(config.to_dict())):
            raise ConfigError("this folder holds an experiment with another configuration "
                              "(use a new --out, or the same preset and options)", self.out)
        self.state["config"] = config.to_dict()
        self.state.setdefault("stages", {})
        self._save_state()

    # --- bookkeeping
    def _save_state(self):
        # several processes may share one experiment (--shard): keep stages others recorded
        if self.state_path.is_file():
            try:
                disk = json.loads(self.state_path.read_text())
                self.state["stages"] = {**disk.get("stages", {}), **self.state.get("stages", {})}
            except ValueError:
                pass
        write_json(self.state_path, self.state)

    def _stage(self, name: str, done: bool, fn):
        if done:
            return
        self.log(f"[reproduce] {name} ...")
        t0 = time.time()
        fn()
        self.state["stages"][name] = {"wall_s": round(time.time() - t0, 1), "finished_unix": int(time.time())}
        self._save_state()


    # --- paths
    @property
    def raw_cohort(self) -> Path:
        return self.user_cohort or self.out / "cohort"

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def sup_raw(self) -> Path:
        return self.user_supervised or self.out / "supervised_cohort"

    @property
    def sup_work(self) -> Path:
        return self.out / "supervised_work"

    @property
    def pretrain_dir(self) -> Path:
        return self.out / "pretrain"

    @property
    def supervised_dir(self) -> Path:
        return self.out / "supervised_model"

    # --- stages
    def _synth(self, out: Path, subjects: int, seed: int, extra: dict):
        from .synth.cohort import generate_cohort
        from .synth.config import SynthConfig

        generate_cohort(out, SynthConfig(**{**self.cfg.synth, **extra, "subjects": subjects, "seed": seed}),
                        overwrite=True, workers=1)

    def prepare_cohorts(self):
        cfg = self.cfg
        if self.user_cohort is None:
            self._stage("synth", (self.raw_cohort / "cohort.json").is_file(),
                        lambda: self._synth(self.raw_cohort, cfg.subjects, cfg.cohort_seed, {}))
        self._stage("index+extract", (self.work / "volumes.csv").is_file(),
                    lambda: self._index_extract(self.raw_cohort, self.work, self.levels))
        if "supervised" in cfg.modes:
            if self.user_supervised is None:
                self._stage("synth-supervised", (self.sup_raw / "cohort.json").is_file(),
                            lambda: self._synth(self.sup_raw, cfg.supervised_subjects, cfg.cohort_seed + 1000,
                                                {"graded_fraction": 1.0}))
            self._stage("index+extract-supervised", (self.sup_work / "volumes.csv").is_file(),
                        lambda: self._index_extract(self.sup_raw, self.sup_work, self.supervised_levels))

    def _index_extract(self, raw: Path, work: Path, levels: str | None):
        if levels is None:
            if not (raw / "truth").is_dir():
                raise ConfigError("a cohort without synthetic truth files needs a level source "
                                  "(--levels KIND:FOLDER, as for `spine-ssl extract`)", raw)
            levels = f"truth:{raw / 'truth'}"
        from .extract import LevelSource, run_extraction
        from .index import build_index

        build_index(raw, work)
        run_extraction(work, LevelSource.parse(levels))

    def pretrain(self):
        from . import checkpoint as ckpt

        splits_file = self.pretrain_splits_for_grading()

        from . import pretrain as P

        cfg = self.pretrain_config()

        def go():
            P.run_pretraining(self.work, self.pretrain_dir, cfg, splits_path=splits_file,
                              resume=ckpt.exists(self.pretrain_dir / "last"), progress=False)

        self._stage("pretrain", ckpt.exists(self.pretrain_dir / "best") and
                    (self.pretrain_dir / "fit.json").is_file(), go)
        # the paper's §4.1 figures on the pretraining test split (same/different AUC, level accuracy)
        self._stage("eval-pairs", (self.pretrain_dir / "eval_test" / "report.json").is_file(),
                    lambda: P.evaluate_checkpoint(self.pretrain_dir, self.work, self.pretrain_dir / "eval_test",
                                                  split="test", progress=False))

    def pretrain_config(self):
        from . import pretrain as P

        d = dict(self.cfg.pretrain)
        return P.load_config(overrides=_flatten(d), recipe=d.pop("recipe", None))

    def grade_config(self, extra: dict):
        from .grading.train import load_config

        d = _merge(self.cfg.grade, extra)
        recipe = d.pop("recipe", None)
        return load_config(overrides=_flatten(d), recipe=recipe)

    def pretrain_splits_for_grading(self) -> Path:
        """The pretraining split (``data.make_splits``: 80:10:10 by family) with the future grading
        test subjects moved into its test split, so pretraining never sees them (the paper: "the
        Siamese network will never have seen the subjects in the classification test set").  The
        grading test subjects are chosen first, as ``grading.make_grading_splits`` would choose
        them without constraint; with this split it then chooses exactly them."""
        from . import grading
        from .data import make_splits, read_vb_table, write_splits

        path = self.out / "pretrain_splits.json"
        if path.is_file():
            return path
        sp = make_splits(read_vb_table(self.work), seed=self.cfg.split_seed)
        records = grading.read_ivd_table(self.work)
        held = set(grading.make_grading_splits(records, {}, seed=self.cfg.split_seed).test)
        fam = {r.subject_key: r.family for r in records}
        held_fams = {fam[s] for s in held}
        moved = {s for subs in sp.subjects.values() for s in subs if fam.get(s) in held_fams}
        for k in ("train", "val"):
            sp.subjects[k] = [s for s in sp.subjects[k] if s not in moved]
        sp.subjects["test"] = sorted(set(sp.subjects["test"]) | moved)
        write_splits(path, sp)
        return path

    def train_supervised(self):
        """The supervised source: a grading network trained from scratch on the second cohort."""
        from . import checkpoint as ckpt
        from . import grading

        def go():
            gcfg = self.grade_config(_merge(self.cfg.supervised_grade, {"transfer": {"mode": "scratch"}}))
            grading.train_grading(self.sup_work, self.supervised_dir, gcfg,
                                  resume=ckpt.exists(self.supervised_dir / "last"))

        done = (self.supervised_dir / "test_metrics.json").is_file()
        if not done and not _claim(self.supervised_dir):
            self.log("[reproduce] another process is training the supervised source; its runs wait for it")
            return
        try:
            self._stage("supervised-source", done, go)
        finally:
            if not done:
                _release(self.supervised_dir)

    def pretrain_splits_file(self) -> Path | None:
        for cand in (self.out / "pretrain_splits.json", self.pretrain_dir / "splits.json", self.work / "splits.json"):
            if cand.is_file():
                return cand
        return None

    def make_splits(self):
        from . import grading

        path = self.out / "grading_splits.json"
        if path.is_file():
            return grading.GradingSplits.from_dict(json.loads(path.read_text()))
        records = grading.read_ivd_table(self.work)
        pf = self.pretrain_splits_file()
        pre = grading.read_pretrain_splits(pf) if pf else {}
        if pf is None and any(m.startswith("ssl") for m in self.cfg.modes):
            raise SpineSSLError("no pretraining splits file found: cannot keep test subjects out of pretraining",
                                self.pretrain_dir)
        splits = grading.make_grading_splits(records, pre, seed=self.cfg.split_seed)
        write_json(path, splits.to_dict())
        return splits

    def sizes(self, splits) -> list[int]:
        from . import grading

        return grading.scaled_train_sizes(len(splits.train), self.cfg.paper_sizes)

    def run_grading(self, splits, data_cache: dict | None = None, max_new_runs: int | None = None,
                    shard: tuple[int, int] = (0, 1)):
        from . import checkpoint as ckpt
        from . import grading
        from .progress import Progress

        sizes = self.sizes(splits)
        subsets = grading.nested_train_subsets(splits, sizes)
        specs = plan(sizes, self.cfg.modes, self.cfg.seeds)
        class_names = grading.class_names_from(grading.read_ivd_table(self.work))
        cache = {} if data_cache is None else data_cache
        todo = [s for i, s in enumerate(specs) if i % shard[1] == shard[0]
                and not (self.out / "runs" / s.key / "test_metrics.json").is_file()]
        if max_new_runs is not None:
            todo = todo[:max_new_runs]
        self.log(f"[reproduce] grading runs: {len(specs) - len(todo)} done, {len(todo)} to do")
        with Progress(len(specs), "grading runs", unit="run") as bar:
            bar.update(len(specs) - len(todo))
            for spec in todo:
                rdir = self.out / "runs" / spec.key
                pre = {"ssl-frozen": self.pretrain_dir, "ssl-finetune": self.pretrain_dir,
                       "supervised": self.supervised_dir}.get(spec.mode)
                if (rdir / "test_metrics.json").is_file():
                    bar.update(1)  # another process finished it meanwhile
                    continue
                if pre is not None and not ((pre / "best" / "checkpoint.json").is_file()
                                            and ((pre / "fit.json").is_file() or (pre / "test_metrics.json").is_file())):
                    self.log(f"[reproduce] {spec.key}: waiting for {pre.name} (another process) - skipped for now")
                    continue
                if not _claim(rdir):
                    self.log(f"[reproduce] {spec.key}: another process is on it - skipped")
                    continue
                try:
                    gcfg = self.grade_config({"transfer": {"mode": spec.mode, "pretrained": str(pre) if pre else None},
                                              "train": {"seed": spec.seed}})
                    t0 = time.time()
                    res = grading.train_grading(self.work, rdir, gcfg, splits=splits,
                                                train_subjects=subsets[spec.size], class_names=class_names,
                                                resume=ckpt.exists(rdir / "last"),
                                                eval_tta=grading.TTAConfig() if self.cfg.eval_tta else None,
                                                data_cache=cache)
                    res["wall_s"] = round(time.time() - t0, 1)
                    res["size"] = spec.size
                    write_json(rdir / "test_metrics.json", res)
                finally:
                    _release(rdir)
                self.write_results(specs)
                bar.update(1)
        self.write_results(specs)

    def write_results(self, specs: Sequence[RunSpec]):
        rows = []
        for s in specs:
            p = self.out / "runs" / s.key / "test_metrics.json"
            if not p.is_file():
                continue
            r = json.loads(p.read_text())
            t = r.get("test") or {}
            rows.append({"size_subjects": s.size, "mode": s.mode, "seed": s.seed, "train_scans": r["n_train_scans"],
                         "train_discs": r["n_train_discs"], "test_discs": t.get("n"),
                         "average_class_accuracy": t.get("average_class_accuracy"),
                         "kappa_linear": t.get("kappa_linear"), "accuracy": t.get("accuracy"),
                         "average_class_accuracy_tta": (r.get("test_tta") or {}).get("average_class_accuracy"),
                         "epochs": r["epochs"], "stop_reason": r["stop_reason"], "wall_s": r.get("wall_s")})
        write_csv(self.out / "results.csv", rows)
        return rows

    # --- everything
    def run(self, command: str = "", max_new_runs: int | None = None, shard: tuple[int, int] = (0, 1)) -> Path:
        """Do (or finish) everything; ``max_new_runs`` stops after that many new grading runs
        (the report then says the experiment is incomplete; the same call continues it);
        ``shard=(i, n)``: this process does the grading runs ``i, i+n, ...`` of the plan, so ``n``
        processes (or machines sharing the folder) can work on one experiment."""
        t0 = time.time()
        if command:
            self.state["command"] = command
        self.prepare_cohorts()
        if any(m.startswith("ssl") for m in self.cfg.modes):
            self.pretrain()
        if "supervised" in self.cfg.modes:
            self.train_supervised()
        splits = self.make_splits()
        cache: dict = {}
        self._stage("baselines", (self.out / "baselines.json").is_file(),
                    lambda: write_json(self.out / "baselines.json", run_baselines(self, splits, cache)))
        self.run_grading(splits, cache, max_new_runs, shard)
        self.state.setdefault("session_wall_s", []).append(round(time.time() - t0, 1))
        self._save_state()
        return write_report(self)


def _merge(a: dict, b: dict) -> dict:
    from .config import merge

    return merge(a, b)


def _flatten(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (the overrides ``config.load`` takes);
    ``model`` stays one dict so a preset name and its overrides go together."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model" and k != "aux_heads":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _claim(rdir: Path) -> bool:
    """Claim a run folder for this process (``.claim`` holds host and pid; a claim by a process
    that no longer exists on this host is taken over)."""
    import socket

    rdir.mkdir(parents=True, exist_ok=True)
    lock = rdir / ".claim"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
            except (OSError, ValueError):
                return False
            if host != socket.gethostname():
                return False
            try:
                os.kill(int(pid), 0)
                return False  # alive: someone else's run
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # stale claim of a killed process
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _release(rdir: Path) -> None:
    (rdir / ".claim").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Naive baselines
# --------------------------------------------------------------------------------------------

def disc_hand_features(ivd: np.ndarray) -> np.ndarray:
    """Two hand features per disc volume (N, 9, 112, 224), volumes normalised so the adjacent
    vertebral bodies' median is 0.5 and scaled to the vertebral-body width:

    - nucleus / VB intensity ratio: mean of the central box (middle 3 slices, rows 48-64,
      middle 40 % of columns) divided by 0.5;
    - disc height / VB width: rows of the central column profile (middle 3 slices, middle 40 %
      of columns) between the two strongest intensity edges above and below the centre row,
      divided by the 224-pixel volume width that spans a fixed multiple of the VB width.
    """
    v = ivd.astype(np.float32)
    n, k, h, w = v.shape
    mid = slice(k // 2 - 1, k // 2 + 2)
    cols = slice(int(w * 0.3), int(w * 0.7))
    nucleus = v[:, mid, h // 2 - 8:h // 2 + 8, cols].mean(axis=(1, 2, 3)) / 0.5
    prof = v[:, mid, :, cols].mean(axis=(1, 3))  # (N, h)
    grad = np.abs(np.diff(prof, axis=1))  # edge between row r and r+1
    c = h // 2
    upper = np.argmax(grad[:, 4:c - 1], axis=1) + 4
    lower = np.argmax(grad[:, c:h - 4], axis=1) + c
    height = (lower - upper).astype(np.float32) / w
    return np.stack([nucleus, height], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, balanced: bool = True, l2: float = 1e-3):
    """Multinomial logistic regression (standardised features, class-balanced, L-BFGS in torch).
    Returns ``predict(x) -> class indices``."""
    import torch

    mu, sd = x.mean(0), x.std(0) + 1e-8
    xt = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.int64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    wts = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    wt = torch.tensor(wts if balanced else np.ones(num_classes), dtype=torch.float64)
    W = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ W + b, yt, weight=wt) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W_, b_ = W.detach().numpy(), b.detach().numpy()

    def predict(xn: np.ndarray) -> np.ndarray:
        return np.argmax(((xn - mu) / sd) @ W_ + b_, axis=1)

    return predict


def identity_pixel_auc(work: Path, subjects: set[str] | None, seed: int = 0, max_pairs: int = 2000,
                       factor: int = 4) -> dict:
    """Same/different-subject AUC of the raw-pixel L2 distance between VB volumes (score = -d).

    Positives: the same level of one subject at two time points; negatives: the same level of
    two different subjects, one from a baseline and one from a follow-up scan (the positives'
    composition).  ``subjects`` restricts to a split (the pretraining test split); volumes are
    block-averaged by ``factor`` in-plane to bound memory."""
    from .extract.files import read_arrays
    from .metrics import roc_auc

    rows = []
    with open(work / "volumes.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"].upper() == "VB" and (subjects is None or r["subject_key"] in subjects):
                rows.append(r)
    by_level: dict[str, list[dict]] = {}
    for r in rows:
        by_level.setdefault(r["level"], []).append(r)
    rng = np.random.default_rng(seed)
    cache: dict[tuple[str, int], np.ndarray] = {}

    def vol(r) -> np.ndarray:
        key = (r["file"], int(r["index"]))
        if key not in cache:
            a = read_arrays(work / r["file"], ["vb"])["vb"][int(r["index"])].astype(np.float32)
            k, h, w = a.shape
            cache[key] = a[:, :h - h % factor, :w - w % factor].reshape(k, h // factor, factor, w // factor,
                                                                        factor).mean(axis=(2, 4)).ravel()
        return cache[key]

    pos, neg = [], []
    for level, rs in by_level.items():
        subj: dict[str, list[dict]] = {}
        for r in rs:
            subj.setdefault(r["subject_key"], []).append(r)
        base = [r for r in rs if int(r.get("timepoint") or 0) == 0]
        follow = [r for r in rs if int(r.get("timepoint") or 0) > 0]
        for s, lst in subj.items():
            lst = sorted(lst, key=lambda r: int(r.get("timepoint") or 0))
            for a in lst:
                for b in lst:
                    if int(a.get("timepoint") or 0) == 0 and int(b.get("timepoint") or 0) > 0:
                        pos.append((a, b))
        if base and follow:
            for _ in range(len([p for p in pos if p[0]["level"] == level]) * 3):
                a, b = base[rng.integers(len(base))], follow[rng.integers(len(follow))]
                if a["subject_key"] != b["subject_key"]:
                    neg.append((a, b))
    if not pos or not neg:
        return {"auc": None, "n_pos": len(pos), "n_neg": len(neg)}
    rng.shuffle(pos)
    rng.shuffle(neg)
    pos, neg = pos[:max_pairs], neg[:max_pairs]
    d = [float(np.linalg.norm(vol(a) - vol(b))) for a, b in pos + neg]
    lab = [1] * len(pos) + [0] * len(neg)
    return {"auc": roc_auc(-np.asarray(d), lab), "n_pos": len(pos), "n_neg": len(neg)}


def run_baselines(rep: Reproduction, splits, cache: dict | None = None) -> dict:
    """Hand-feature logistic regression per training-set size (same splits and subsets as the
    networks) and the raw-pixel identity AUC on the pretraining test split."""
    from . import grading
    from .metrics import classification_report

    records = grading.read_ivd_table(rep.work)
    class_names = grading.class_names_from(records)
    idx = {c: i for i, c in enumerate(class_names)}
    graded = [r for r in records if r.grade]
    by_subject: dict[str, list] = {}
    for r in graded:
        by_subject.setdefault(r.subject_key, []).append(r)
    test = [r for s in splits.test for r in by_subject.get(s, [])]
    out: dict = {"class_names": class_names, "grading_logreg": {}}
    if test:
        feats_test = disc_hand_features(grading.load_ivd_arrays(rep.work, test))
        y_test = np.array([idx[r.grade] for r in test])
        sizes = rep.sizes(splits)
        subsets = grading.nested_train_subsets(splits, sizes)
        train_all = [r for s in splits.train for r in by_subject.get(s, [])]
        feats_all = disc_hand_features(grading.load_ivd_arrays(rep.work, train_all))
        pos = {r.volume_id: i for i, r in enumerate(train_all)}
        for n in sizes:
            tr = [r for s in subsets[n] for r in by_subject.get(s, [])]
            x = feats_all[[pos[r.volume_id] for r in tr]]
            y = np.array([idx[r.grade] for r in tr])
            pred = fit_logistic(x, y, len(class_names))(feats_test)
            d = classification_report(y_test, pred, class_names=class_names).to_dict()
            out["grading_logreg"][str(n)] = {"average_class_accuracy": d["average_class_accuracy"],
                                             "kappa_linear": d["kappa_linear"], "n_test": d["n"]}
        # always-predict-the-majority-class reference
        maj = np.bincount(np.array([idx[r.grade] for r in train_all]), minlength=len(class_names)).argmax()
        out["majority_class_average_class_accuracy"] = classification_report(
            y_test, np.full_like(y_test, maj), class_names=class_names).to_dict()["average_class_accuracy"]
    pf = rep.pretrain_splits_file()
    pre_test = None
    if pf:
        pre = grading.read_pretrain_splits(pf)
        pre_test = {s for s, k in pre.items() if k == "test"}
    out["identity_pixel_auc"] = identity_pixel_auc(rep.work, pre_test, seed=rep.cfg.split_seed)
    out["identity_pixel_auc"]["split"] = "pretraining test" if pre_test is not None else "all subjects"
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

MODE_LABELS = {"supervised": "supervised transfer", "ssl-frozen": "SSL (frozen)", "ssl-finetune": "SSL (fine-tuned)",
               "scratch": "from scratch", "frozen-random": "frozen random"}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (size, mode): mean ± 95 % CI of the test average class accuracy over seeds."""
    from .metrics import mean_ci95

    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((int(r["size_subjects"]), r["mode"]), []).append(r)
    out = []
    for (n, mode), rs in sorted(groups.items()):
        m, h = mean_ci95([float(r["average_class_accuracy"]) for r in rs if r["average_class_accuracy"] not in (None, "")])
        k, _ = mean_ci95([float(r["kappa_linear"]) for r in rs if r["kappa_linear"] not in (None, "")])
        out.append({"size_subjects": n, "mode": mode, "seeds": len(rs),
                    "train_scans": int(round(np.mean([float(r["train_scans"]) for r in rs]))),
                    "aca_mean": m, "aca_ci95": h, "kappa_mean": k,
                    "wall_s": float(np.sum([float(r.get("wall_s") or 0) for r in rs]))})
    return out


def ordering_check(summary: list[dict]) -> tuple[bool | None, str]:
    """The paper's ordering at the smallest size: supervised >= SSL > scratch > frozen-random."""
    if not summary:
        return None, "no results yet"
    n0 = min(s["size_subjects"] for s in summary)
    at = {s["mode"]: s["aca_mean"] for s in summary if s["size_subjects"] == n0}
    need = ("supervised", "ssl-frozen", "scratch", "frozen-random")
    if any(m not in at for m in need):
        return None, f"not all of {', '.join(need)} ran at the smallest size ({n0} subjects)"
    ssl = max(at["ssl-frozen"], at.get("ssl-finetune", -1.0))
    holds = at["supervised"] >= ssl > at["scratch"] > at["frozen-random"]
    txt = (f"At the smallest size ({n0} training subjects): supervised {at['supervised']:.3f}, best SSL "
           f"{ssl:.3f}, scratch {at['scratch']:.3f}, frozen random {at['frozen-random']:.3f} — the paper's "
           f"ordering (supervised ≥ SSL > scratch > frozen random) **{'holds' if holds else 'does NOT hold'}** "
           "(comparison of means; see the confidence intervals before reading much into small gaps).")
    return holds, txt


def plot_fig8(path: Path, summary: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for mode in ("supervised", "ssl-frozen", "ssl-finetune", "scratch", "frozen-random"):
        pts = sorted((s["train_scans"], s["aca_mean"], s["aca_ci95"]) for s in summary if s["mode"] == mode)
        if not pts:
            continue
        x, y, e = zip(*pts)
        e = [0 if not np.isfinite(v) else v for v in e]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=MODE_LABELS.get(mode, mode))
    ax.set_xlabel("training scans")
    ax.set_ylabel("test average class accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def write_report(rep: Reproduction) -> Path:
    from .metrics import mean_ci95  # noqa: F401  (keeps the import error early if scipy is missing)

    out = rep.out
    rows = []
    if (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    summary = summarise(rows)
    write_json(out / "summary.json", summary)
    plot_fig8(out / "fig8.png", summary, f"Grading accuracy vs training scans ({rep.cfg.name} preset)")
    base = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").is_file() else {}
    splits = json.loads((out / "grading_splits.json").read_text()) if (out / "grading_splits.json").is_file() else {}
    st = rep.state
    L = [f"# SpineSSL reproduction of the learning-curve experiment ({rep.cfg.name} preset)", ""]
    if st.get("command"):
        L += ["Made by:", "", "```", st["command"], "```", ""]
    total = sum(v["wall_s"] for v in st.get("stages", {}).values()) + sum(s["wall_s"] for s in summary)
    L += [f"Cohort: `{rep.raw_cohort.name}`; grading subjects train / val / test = "
          f"{len(splits.get('train', []))} / {len(splits.get('val', []))} / {len(splits.get('test', []))}; "
          f"modes {', '.join(rep.cfg.modes)}; seeds {', '.join(map(str, rep.cfg.seeds))}.", ""]
    L += [f"Configuration: pretraining `{json.dumps(rep.cfg.pretrain, sort_keys=True)}`; grading "
          f"`{json.dumps(rep.cfg.grade, sort_keys=True)}`; supervised source `{json.dumps(rep.cfg.supervised_grade)}`; "
          f"machine: {_machine()}.", ""]
    for note in splits.get("notes", []):
        L.append(f"- split note: {note}")
    L += ["## Test average class accuracy (mean ± 95 % CI over seeds)", "",
          "| train subjects | train scans | mode | seeds | avg class acc | ± 95 % CI | linear κ |",
          "|---:|---:|---|---:|---:|---:|---:|"]
    for s in summary:
        L.append(f"| {s['size_subjects']} | {s['train_scans']} | {MODE_LABELS.get(s['mode'], s['mode'])} | {s['seeds']} | "
                 f"{_fmt(s['aca_mean'])} | {_fmt(s['aca_ci95'])} | {_fmt(s['kappa_mean'])} |")
    holds, txt = ordering_check(summary)
    L += ["", "![accuracy vs training scans](fig8.png)", "", "## Does the paper's ordering hold?", "", txt, ""]
    if base:
        L += ["## Naive baselines (same splits)", "",
              "| train subjects | hand-feature logistic regression: avg class acc | linear κ |", "|---:|---:|---:|"]
        for n, d in base.get("grading_logreg", {}).items():
            L.append(f"| {n} | {_fmt(d['average_class_accuracy'])} | {_fmt(d['kappa_linear'])} |")
        L += ["", f"Majority-class prediction: average class accuracy "
                  f"{_fmt(base.get('majority_class_average_class_accuracy'))} (= 1 / number of classes).", ""]
        ia = base.get("identity_pixel_auc", {})
        L += [f"Identity from raw pixels ({ia.get('split')} split, same level, baseline vs follow-up): "
              f"AUC {_fmt(ia.get('auc'))} ({ia.get('n_pos')} positive / {ia.get('n_neg')} negative VB pairs).", ""]
    pm = _pretrain_metrics(rep)
    if pm:
        L += ["## Pretraining (longitudinal SSL)", "", pm, ""]
    L += ["## Time", "", "| stage | wall time (s) |", "|---|---:|"]
    for name, v in st.get("stages", {}).items():
        L.append(f"| {name} | {v['wall_s']} |")
    L.append(f"| grading runs ({len(rows)}) | {round(sum(s['wall_s'] for s in summary), 1)} |")
    L += [f"| **total** | **{round(total, 1)}** |", ""]
    n_planned = len(rep.cfg.modes) * len(rep.cfg.seeds) * len(rep.cfg.paper_sizes)
    if len(rows) < n_planned:
        L += [f"**Incomplete:** {len(rows)} of {n_planned} planned runs have finished; run the same command "
              "again to continue.", ""]
    L += ["Per-run figures: `results.csv`; per-run models, logs and confusion matrices: `runs/<run>/`.", ""]
    write_text(out / "report.md", "\n".join(L))
    return out / "report.md"


def _machine() -> str:
    import platform

    try:
        import torch

        dev = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
            f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    except ImportError:  # pragma: no cover
        dev = "?"
    cpu = platform.processor() or platform.machine()
    try:
        load = ", load average %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{dev}, {cpu}{load}"


def _pretrain_metrics(rep: Reproduction) -> str:
    p = rep.pretrain_dir / "eval_test" / "report.json"
    if p.is_file():
        d = json.loads(p.read_text())
        fit = json.loads((rep.pretrain_dir / "fit.json").read_text()) if (rep.pretrain_dir / "fit.json").is_file() else {}
        return (f"Pretraining test split (`spine-ssl eval-pairs`): same/different-subject AUC of the fc7 distance "
                f"{_fmt(d.get('auc'))} (paper 0.946), VB level accuracy {_fmt(d.get('level_accuracy'))} (paper 0.978); "
                f"{d.get('n_positive_pairs')} positive / {d.get('n_negative_pairs')} negative pairs. Training stopped: {fit.get('stop_reason')} "
                f"after epoch {fit.get('last_epoch')}. Compare with the raw-pixel AUC below.")
    p = rep.pretrain_dir / "fit.json"
    if p.is_file():
        d = json.loads(p.read_text())
        return f"stopped: {d.get('stop_reason')} after epoch {d.get('last_epoch')} (best validation loss {_fmt(d.get('best_val_loss'), 4)})"
    return ""
