"""The experiment runner: stages, resumable grading runs, claims for parallel processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence


from ..atomic import write_csv, write_json
from ..errors import ConfigError, SpineSSLError
from . import AUX_MODE, ReproduceConfig, RunSpec, modes_for, plan
from .baselines import run_baselines
from .report import write_report


class Reproduction:
    """One experiment folder ``out``; ``run()`` does (or finishes) everything."""

    def __init__(self, out: str | os.PathLike, config: ReproduceConfig, cohort: str | os.PathLike | None = None,
                 supervised_cohort: str | os.PathLike | None = None, levels: str | None = None,
                 supervised_levels: str | None = None, grades: str | None = None,
                 supervised_grades: str | None = None, log=print):
        """``levels`` / ``supervised_levels``: the ``spine-ssl extract --levels KIND:FOLDER`` source
        of a user cohort; ``grades`` / ``supervised_grades``: its disc gradings, a CSV in the format
        of ``spine-ssl extract --grades`` (synthetic cohorts use their truth files for both)."""
        self.out = Path(out)
        self.levels = levels
        self.supervised_levels = supervised_levels
        self.grades = grades
        self.supervised_grades = supervised_grades
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
    def aux_pretrain_dir(self) -> Path:
        return self.out / "pretrain_aux"

    @property
    def supervised_dir(self) -> Path:
        return self.out / "supervised_model"

    # --- stages
    def _synth(self, out: Path, subjects: int, seed: int, extra: dict):
        from ..synth.cohort import generate_cohort
        from ..synth.config import SynthConfig

        generate_cohort(out, SynthConfig(**{**self.cfg.synth, **extra, "subjects": subjects, "seed": seed}),
                        overwrite=True, workers=1)

    def prepare_cohorts(self):
        cfg = self.cfg
        if self.user_cohort is None:
            self._stage("synth", (self.raw_cohort / "cohort.json").is_file(),
                        lambda: self._synth(self.raw_cohort, cfg.subjects, cfg.cohort_seed, {}))
        self._stage("index+extract", (self.work / "volumes.csv").is_file(),
                    lambda: self._index_extract(self.raw_cohort, self.work, self.levels, self.grades))
        if "supervised" in cfg.modes:
            if self.user_supervised is None:
                self._stage("synth-supervised", (self.sup_raw / "cohort.json").is_file(),
                            lambda: self._synth(self.sup_raw, cfg.supervised_subjects, cfg.cohort_seed + 1000,
                                                {"graded_fraction": 1.0}))
            self._stage("index+extract-supervised", (self.sup_work / "volumes.csv").is_file(),
                        lambda: self._index_extract(self.sup_raw, self.sup_work, self.supervised_levels,
                                                    self.supervised_grades))

    def _index_extract(self, raw: Path, work: Path, levels: str | None, grades: str | None):
        from ..extract import LevelSource, run_extraction
        from ..index import build_index

        if levels is None:
            if not (raw / "truth").is_dir():
                raise ConfigError("a cohort without synthetic truth files needs a level source "
                                  "(--levels KIND:FOLDER, as for `spine-ssl extract`)", raw)
            levels = f"truth:{raw / 'truth'}"
        if grades is None and not levels.startswith("truth:"):
            raise ConfigError("a cohort without synthetic truth files needs its disc gradings "
                              "(--grades CSV, as for `spine-ssl extract --grades`)", raw)
        families = raw / "subjects.csv" if (raw / "subjects.csv").is_file() else None
        build_index(raw, work, families_csv=families)
        run_extraction(work, LevelSource.parse(levels), grades=grades)

    def pretrain(self):
        splits_file = self.pretrain_splits_for_grading()

        from .. import pretrain as P

        cfg = self.pretrain_config()
        self._pretrain_one(self.pretrain_dir, cfg, "", splits_file)
        base = _flatten(self._pretrain_dict())
        recipe = self.cfg.pretrain.get("recipe")
        if self.cfg.compare_objective:  # the other pair objective at equal compute, for the report
            other = "contrastive" if cfg.loss.objective == "ntxent" else "ntxent"
            ocfg = P.load_config(overrides={**base, "loss.objective": other}, recipe=recipe)
            self._pretrain_one(self.out / f"pretrain_{other}", ocfg, f"-{other}", splits_file)
        if self.cfg.aux_heads:  # metadata heads (sex, age) as extra free labels, same recipe otherwise
            acfg = P.load_config(overrides={**base, "model.aux_heads": dict(self.cfg.aux_heads)}, recipe=recipe)
            self._pretrain_one(self.aux_pretrain_dir, acfg, "-aux", splits_file)

    def _pretrain_one(self, d: Path, cfg, suffix: str, splits_file: Path):
        """Stage ``pretrain<suffix>``: one pretraining into ``d`` (resumed from ``d/last``), then its
        evaluation stages."""
        from .. import checkpoint as ckpt
        from .. import pretrain as P

        def go():
            P.run_pretraining(self.work, d, cfg, splits_path=splits_file, resume=ckpt.exists(d / "last"),
                              progress=False)

        self._stage(f"pretrain{suffix}", ckpt.exists(d / "best") and (d / "fit.json").is_file(), go)
        self._evaluate_pretraining(d, suffix)

    def _evaluate_pretraining(self, d: Path, suffix: str):
        """The paper's §4.1 figures on the pretraining test split (same/different AUC beside the
        raw-pixel AUC on the same pairs, level accuracy) and the frozen-trunk probes."""
        from .. import pretrain as P
        from ..probe import probe_checkpoint

        self._stage(f"eval-pairs{suffix}", (d / "eval_test" / "report.json").is_file(),
                    lambda: P.evaluate_checkpoint(d, self.work, d / "eval_test", split="test", progress=False))
        self._stage(f"probe{suffix}", (d / "probe" / "probe.json").is_file(),
                    lambda: probe_checkpoint(d, self.work, d / "probe"))

    def _pretrain_dict(self) -> dict:
        import copy

        d = copy.deepcopy(self.cfg.pretrain)  # the config loader may write into nested dicts
        d.pop("recipe", None)
        return d

    def pretrain_config(self):
        from .. import pretrain as P

        return P.load_config(overrides=_flatten(self._pretrain_dict()), recipe=self.cfg.pretrain.get("recipe"))

    def grade_config(self, extra: dict):
        from ..grading.train import load_config

        d = _merge(self.cfg.grade, extra)
        recipe = d.pop("recipe", None)
        return load_config(overrides=_flatten(d), recipe=recipe)

    def pretrain_splits_for_grading(self) -> Path:
        """The pretraining split (``data.make_splits``: 80:10:10 by family) with the future grading
        test subjects moved into its test split, so pretraining never sees them (the paper: "the
        Siamese network will never have seen the subjects in the classification test set").  The
        grading test subjects are chosen first, as ``grading.make_grading_splits`` would choose
        them without constraint; with this split it then chooses exactly them."""
        from .. import grading
        from ..data import make_splits, read_vb_table, write_splits

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
        from .. import checkpoint as ckpt
        from .. import grading

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
        from .. import grading

        path = self.out / "grading_splits.json"
        if path.is_file():
            return grading.GradingSplits.from_dict(json.loads(path.read_text()))
        records = grading.read_ivd_table(self.work)
        pf = self.pretrain_splits_file()
        pre = grading.read_pretrain_splits(pf) if pf else {}
        if pf is None and any(m.startswith("ssl") for m in modes_for(self.cfg)):
            raise SpineSSLError("no pretraining splits file found: cannot keep test subjects out of pretraining",
                                self.pretrain_dir)
        splits = grading.make_grading_splits(records, pre, seed=self.cfg.split_seed)
        write_json(path, splits.to_dict())
        return splits

    def sizes(self, splits) -> list[int]:
        from .. import grading

        return grading.scaled_train_sizes(len(splits.train), self.cfg.paper_sizes)

    def run_grading(self, splits, data_cache: dict | None = None, max_new_runs: int | None = None,
                    shard: tuple[int, int] = (0, 1)):
        from .. import checkpoint as ckpt
        from .. import grading
        from ..progress import Progress

        sizes = self.sizes(splits)
        subsets = grading.nested_train_subsets(splits, sizes)
        specs = plan(sizes, modes_for(self.cfg), self.cfg.seeds)
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
                       "supervised": self.supervised_dir, AUX_MODE: self.aux_pretrain_dir}.get(spec.mode)
                transfer = "ssl-frozen" if spec.mode == AUX_MODE else spec.mode
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
                    gcfg = self.grade_config({"transfer": {"mode": transfer, "pretrained": str(pre) if pre else None},
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
        if any(m.startswith("ssl") for m in modes_for(self.cfg)):
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
    from ..config import merge

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
