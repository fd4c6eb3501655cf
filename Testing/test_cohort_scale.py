"""Cohort scale (issue #18): index/extract shards run as separate processes, then `spine-ssl merge`,
equal one unsharded run byte for byte; a killed shard re-run loses and duplicates nothing;
concurrent shards in one folder share one salt; merge refuses mismatched salts/configs."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from SpineSSLLib.cli import main
from SpineSSLLib.shard import Shard, from_env, parse, shard_of

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = ("series.csv", "sources.csv", "errors.csv", "index.json", "volumes.csv", "scans.csv")


def _cmd(*args):
    return [sys.executable, "-m", "SpineSSLLib", "-q", *map(str, args)]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("SLURM_ARRAY_TASK_ID", None)
    env.update(extra)
    return env


def _run_all(cmds_envs):
    """Start every command at once (they write into one cohort folder concurrently), wait for all."""
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c, e in cmds_envs]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o


def _same_cohort(a: Path, b: Path):
    for name in MANIFESTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    va = sorted(p.name for p in (a / "volumes").iterdir())
    assert va == sorted(p.name for p in (b / "volumes").iterdir())
    for n in va:
        pa, pb = a / "volumes" / n, b / "volumes" / n
        if n.endswith(".json"):
            assert pa.read_bytes() == pb.read_bytes(), n
        else:  # npz: every member's bytes (the zip container stamps its own write time)
            with zipfile.ZipFile(pa) as za, zipfile.ZipFile(pb) as zb:
                assert za.namelist() == zb.namelist()
                for m in za.namelist():
                    assert za.read(m) == zb.read(m), (n, m)


def _fresh(tmp_path, C, name="B"):
    B = tmp_path / name
    B.mkdir()
    shutil.copy(C / "cohort_salt.txt", B / "cohort_salt.txt")  # same salt -> same keys as the single run
    return B


def test_shard_spec_and_slurm_default():
    assert parse("2/8") == Shard(2, 8) and parse("none") is None and parse(None) is None
    assert from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "4"}) == Shard(1, 3)
    assert from_env({}) is None
    for bad in ("3/3", "1-3", "a/b"):
        with pytest.raises(Exception, match="shard"):
            parse(bad)
    with pytest.raises(Exception, match="--array=0-2"):
        from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"})
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"S{i:06d}", 3)] += 1
    assert min(counts) > 900  # about a third each
    assert shard_of("Sabc", 7) == shard_of("Sabc", 7)


def test_three_shard_processes_then_merge_equal_single_run(synth_cohort, tmp_path, capsys):
    syn, C = synth_cohort
    B = _fresh(tmp_path, C)
    truth = f"truth:{syn / 'truth'}"
    # shard 1 takes its number from the Slurm array variables, the others from --shard
    slurm = _env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3")
    _run_all([(_cmd("index", syn / "dicom", "--out", B, *([] if i == 1 else ["--shard", f"{i}/3"])),
               slurm if i == 1 else _env()) for i in range(3)])
    _run_all([(_cmd("extract", B, "--levels", truth, "--device", "cpu", "--shard", f"{i}/3"), _env()) for i in range(3)])
    series = [list(csv.DictReader(open(B / "shards" / f"index-{i}-of-3" / "series.csv"))) for i in range(3)]
    # whole subjects per shard (a shard may be empty: the partition depends on the cohort's salt)
    assert len({r["subject_key"] for s in series for r in s}) == sum(len({r["subject_key"] for r in s}) for s in series)
    capsys.readouterr()
    assert main(["merge", str(B)]) == 0
    assert "3 index shards" in capsys.readouterr().out
    _same_cohort(C, B)
    before = {n: (B / n).read_bytes() for n in MANIFESTS}
    assert main(["-q", "merge", str(B)]) == 0  # idempotent
    assert before == {n: (B / n).read_bytes() for n in MANIFESTS}


def test_killed_shard_rerun_loses_and_duplicates_nothing(synth_cohort, tmp_path, capsys):
    syn, C = synth_cohort
    B = _fresh(tmp_path, C)
    truth = f"truth:{syn / 'truth'}"
    for i in range(3):
        assert main(["-q", "index", str(syn / "dicom"), "--out", str(B), "--shard", f"{i}/3"]) == 0
    n_scans = [sum(r["status"] == "selected" for r in csv.DictReader(open(B / "shards" / f"index-{i}-of-3" / "series.csv")))
               for i in range(3)]
    big = max(range(3), key=lambda i: n_scans[i])
    assert n_scans[big] >= 2
    # the other shards finished earlier: their volumes are there (copied from the single run), so
    # their extraction only writes its manifests
    (B / "volumes").mkdir()
    for i in set(range(3)) - {big}:
        for r in csv.DictReader(open(B / "shards" / f"index-{i}-of-3" / "series.csv")):
            for ext in (".npz", ".json"):
                shutil.copy(C / "volumes" / f"{r['scan_key']}{ext}", B / "volumes")
        assert main(["-q", "extract", str(B), "--levels", truth, "--device", "cpu", "--shard", f"{i}/3"]) == 0
    before = set((B / "volumes").glob("*.npz"))
    p = subprocess.Popen(_cmd("extract", B, "--levels", truth, "--device", "cpu", "--shard", f"{big}/3"), env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while set((B / "volumes").glob("*.npz")) == before and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = set((B / "volumes").glob("*.npz")) - before
    assert 1 <= len(done) < n_scans[big], "the shard was not killed part-way"
    temporaries = [p for p in (B / "volumes").iterdir() if p.name.startswith(".")]
    assert not (B / "shards" / f"extract-{big}-of-3" / "volumes.csv").exists()
    capsys.readouterr()
    assert main(["merge", str(B)]) == 2  # refuses an incomplete set, naming the missing shard
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"extract shard {big}/3 is missing" in err
    assert main(["-q", "extract", str(B), "--levels", truth, "--device", "cpu", "--shard", f"{big}/3"]) == 0
    assert main(["-q", "merge", str(B)]) == 0
    assert not any(p.exists() for p in temporaries)  # the re-run removed what the kill left
    _same_cohort(C, B)
    ids = [r["volume_id"] for r in csv.DictReader(open(B / "volumes.csv"))]
    assert len(ids) == len(set(ids))


def test_concurrent_shards_in_a_fresh_folder_share_one_salt(synth_cohort, tmp_path):
    syn, C = synth_cohort
    D = tmp_path / "D"  # no salt yet: the three processes race to create it
    _run_all([(_cmd("index", syn / "dicom", "--out", D, "--shard", f"{i}/3"), _env()) for i in range(3)])
    ids = {json.loads((D / "shards" / f"index-{i}-of-3" / "index.json").read_text())["salt_id"] for i in range(3)}
    assert len(ids) == 1
    assert not [p for p in D.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert main(["-q", "merge", str(D)]) == 0
    a = list(csv.DictReader(open(C / "series.csv")))
    d = list(csv.DictReader(open(D / "series.csv")))
    assert len(a) == len(d) and {r["scan_key"] for r in a}.isdisjoint({r["scan_key"] for r in d})  # other salt


def test_merge_refuses_mismatched_salt_config_and_gaps(synth_cohort, tmp_path, capsys):
    syn, C = synth_cohort
    X, Y = tmp_path / "X", tmp_path / "Y"
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(X), "--shard", "0/2"]) == 0
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(Y), "--shard", "1/2"]) == 0
    capsys.readouterr()
    assert main(["merge", str(X), str(Y)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another salt" in err and "cohort_salt.txt" in err
    # same salt, another selection rule: refused, naming the key
    shutil.copy(X / "cohort_salt.txt", Y / "cohort_salt.txt")
    (tmp_path / "rules.json").write_text(json.dumps({"prefer": "last"}))
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(Y), "--shard", "1/2", "--config",
                 str(tmp_path / "rules.json")]) == 0
    capsys.readouterr()
    assert main(["merge", str(X), str(Y)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another config" in err
    # the right config: merged from two folders
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(Y), "--shard", "1/2"]) == 0
    assert main(["-q", "merge", str(X), str(Y)]) == 0
    assert len(list(csv.DictReader(open(X / "series.csv")))) == len(list(csv.DictReader(open(C / "series.csv"))))
    # a gap
    Z = tmp_path / "Z"
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(Z), "--shard", "2/3"]) == 0
    capsys.readouterr()
    assert main(["merge", str(Z)]) == 2
    assert "index shard 0/3 is missing" in capsys.readouterr().err
