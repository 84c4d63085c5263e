"""Bad input never starts a run: scenario keys and values in every section, flags, data files,
model checkpoints, run folders to resume, cluster addresses and cluster resources each give
exactly one line on stderr naming the problem, exit status 2, and nothing written: no run
folder, and a run folder given to --resume byte-identical to what it was."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import launch
from conftest import TINY
from fedgrow_ray.models import Shape, get_family

ROOT = Path(__file__).resolve().parent.parent


def snapshot(root: Path, skip: Path) -> dict:
    """Every file under `root` (but under `skip`, the data cache) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.parents}


def tiny_file(tmp_path, **changes) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return str(path)


# ---- what the cases need --------------------------------------------------------------------
def files_data(tmp_path, text: str, **files) -> list[str]:
    train = tmp_path / "train.csv"
    train.write_text(text)
    spec = {"source": "files", "files": {"train": str(train), "text_column": "text", **files}}
    return [tiny_file(tmp_path), "--set", f"data={json.dumps(spec)}"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    """A real run folder (tiny scenario, two rounds, local executor) to copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert launch.main([tiny_file(out.parent), "--executor", "local", "--out", str(out), "--cache", cache]) == 0
    return out


def stopped_run(tmp_path, finished_run, damage=None) -> str:
    """A copy of the finished run marked as stopped (so it would resume), then damaged."""
    out = tmp_path / "stopped"
    shutil.copytree(finished_run, out)
    (out / "status.json").write_text('{"status": "failed", "error": "interrupted"}')
    for name in ("summary.json", "results.md", "curves.png"):
        (out / name).unlink()
    if damage:
        damage(out)
    return str(out)


def rewrite_checkpoint(change):
    def damage(out):
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        change(state)
        torch.save(state, out / "checkpoint.pt")
    return damage


def edit_config(out: Path) -> None:
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("\nrounds: 2\n", "\nrounds: 0\n"))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def wide_checkpoint(tmp_path) -> list[str]:
    """Real save_pretrained folders whose small model is wider than the intermediate shape."""
    family = get_family("text", vocab_size=300, max_positions=16, num_classes=4)
    for pid in range(6):
        family.build(Shape(width=32, layers=1, heads=2, ffn=64), seed=pid).save_pretrained(tmp_path / f"p{pid}")
    return [tiny_file(tmp_path), "--set", f"model.checkpoints={tmp_path}/p{{id}}"]


def ray_address(ray):
    return ray.get_runtime_context().gcs_address


# (id, args(tmp_path, fixtures) -> argv, the expected text of the one line). Without a scenario
# of their own, cases run on the tiny scenario (6 participants, 2 rounds, fedgrow): should a
# check be missing, the run it lets through is short.
CASES = [
    # the top level
    ("async buffer larger than the concurrency",
     lambda t, f: ["--set", "server.mode=async", "--set", "server.concurrency=3", "--set", "server.buffer_size=4"],
     "error: scenario key 'server.buffer_size': 4 is more than server.concurrency=3"),
    ("async with a deadline",
     lambda t, f: ["--set", "server.mode=async", "--set", "server.concurrency=5", "--set", "deadline_s=2"],
     "error: scenario key 'deadline_s': 2.0 is not allowed with server.mode: async; allowed: None"),
    ("async staleness weight unknown",
     lambda t, f: ["--set", "server.staleness_weight=linear"],
     "error: scenario key 'server.staleness_weight': 'linear' is not allowed; allowed: ['constant', 'polynomial']"),
    ("rounds 0", lambda t, f: ["--set", "rounds=0"],
     "error: scenario key 'rounds': 0 is not allowed; expected an integer >= 1"),
    ("seed negative", lambda t, f: ["--set", "seed=-1"],
     "error: scenario key 'seed': -1 is not allowed; expected an integer >= 0"),
    ("unknown top-level key", lambda t, f: ["--set", "participnts=3"],
     "error: scenario key 'participnts' is unknown (did you mean 'participants'?)"),
    ("unknown method", lambda t, f: ["--set", "methods=[fedgrow, fedprox]"],
     "error: scenario key 'methods[1]': 'fedprox' is not allowed; allowed: ['fedgrow', "),
    ("protocol", lambda t, f: ["--set", "protocol=paperish"],
     "error: scenario key 'protocol': 'paperish' is not allowed; allowed: ['paper', 'reference-code']"),
    ("deadline zero", lambda t, f: ["--set", "deadline_s=0"],
     "error: scenario key 'deadline_s': 0 is not allowed; expected a number > 0"),
    # server
    ("aggregator", lambda t, f: ["--set", "server.aggregator=krum"],
     "error: scenario key 'server.aggregator': 'krum' is not allowed; allowed: ['fedavg', 'median', 'trimmed_mean']"),
    ("trim fraction", lambda t, f: ["--set", "server.trim_fraction=0.5"],
     "error: scenario key 'server.trim_fraction': 0.5 is not allowed; expected a number >= 0.0 and <= 0.49"),
    # model
    ("model family", lambda t, f: ["--set", "model.family=audio"],
     "error: scenario key 'model.family': 'audio' is not allowed; allowed: ['text', 'image']"),
    ("target narrower than intermediate", lambda t, f: ["--set", "model.target.width=16"],
     "error: scenario key 'model.target': width=16 is smaller than model.intermediate width=24"),
    ("checkpoint template", lambda t, f: ["--set", "model.checkpoints=ckpt/{name}"],
     "error: scenario key 'model.checkpoints': 'ckpt/{name}' is not a folder template (KeyError: 'name')"),
    ("checkpoints missing", lambda t, f: [tiny_file(t), "--set", "model.checkpoints=/nowhere/p{id}"],
     "error: scenario key 'model.checkpoints': participant 0's checkpoint folder '/nowhere/p0' has no config.json"),
    ("checkpoint too wide", lambda t, f: wide_checkpoint(t),
     "'s checkpoint"),  # completed below: the path is tmp_path's
    # ligo, training, budget, sampling, eval
    ("ligo init", lambda t, f: ["--set", "ligo.width_init=random"],
     "error: scenario key 'ligo.width_init': 'random' is not allowed; allowed: ['identity-plus', 'xavier']"),
    ("negative learning rate", lambda t, f: ["--set", "training.lr=-1e-3"],
     "error: scenario key 'training.lr': -0.001 is not allowed; expected a number > 0"),
    ("training typo", lambda t, f: ["--set", "training.local_step=3"],
     "error: scenario key 'training.local_step' is unknown (did you mean 'training.local_steps'?)"),
    ("joint_local not a boolean", lambda t, f: ["--set", "training.joint_local=maybe"],
     "error: scenario key 'training.joint_local': 'maybe' is not allowed; expected true or false"),
    ("precision", lambda t, f: ["--set", "training.precision=fp8"],
     "error: scenario key 'training.precision': 'fp8' is not allowed; allowed: ['fp32', 'bf16', 'fp16']"),
    ("micro-batch larger than the batch", lambda t, f: ["--set", "training.micro_batch_size=9"],
     "error: scenario key 'training.micro_batch_size': 9 is not allowed; at most training.batch_size=8 "
     "(or null for whole batches)"),
    ("micro-batch zero", lambda t, f: ["--set", "training.micro_batch_size=0"],
     "error: scenario key 'training.micro_batch_size': 0 is not allowed; expected an integer >= 1"),
    ("two budgets", lambda t, f: ["--set", "budget.bytes=1e6", "--set", "budget.flops=1e12"],
     "error: scenario keys 'budget.bytes' and 'budget.flops' are all set; set at most one budget"),
    ("sampling both", lambda t, f: ["--set", "sampling.fraction=0.5", "--set", "sampling.count=3"],
     "error: scenario keys 'sampling.fraction' and 'sampling.count' are both set; set at most one"),
    ("sampling more than there are", lambda t, f: ["--set", "sampling.count=20"],
     "error: scenario key 'sampling.count': 20 is more than participants=6"),
    ("eval every 0", lambda t, f: ["--set", "eval.every=0"],
     "error: scenario key 'eval.every': 0 is not allowed; expected an integer >= 1"),
    # hosts
    ("gpus 1.5", lambda t, f: ["--set", "hosts.num_gpus=1.5"],
     "error: scenario key 'hosts.num_gpus': 1.5 is not allowed; a fraction below 1 or a whole number of GPUs"),
    ("placement", lambda t, f: ["--set", "hosts.placement=random"],
     "error: scenario key 'hosts.placement': 'random' is not allowed; allowed: ['spread', 'pack']"),
    # faults
    ("kill after the last round", lambda t, f: ["--set", "faults.kill_host=[{host: 0, round: 99}]"],
     "error: scenario key 'faults.kill_host[0].round': 99 is after the last round (2)"),
    ("kill in a method not run", lambda t, f: ["--set", "faults.kill_host=[{host: 0, round: 1, method: local_small}]"],
     "error: scenario key 'faults.kill_host[0].method': 'local_small' is not allowed; it is not one of the "
     "scenario's methods ['fedgrow']"),
    ("kill a host beyond hosts.actors", lambda t, f: ["--set", "hosts.actors=2",
                                                      "--set", "faults.kill_host=[{host: 2, round: 1}]"],
     "error: scenario key 'faults.kill_host[0].host': 2 does not exist; hosts are numbered 0 to 1"),
    ("bad update of nobody", lambda t, f: ["--set", "faults.bad_update=[{participant: 99, round: 1, kind: nan}]"],
     "error: scenario key 'faults.bad_update[0].participant': 99 does not exist; participants are numbered 0 to 5"),
    ("bad update after the last round", lambda t, f: ["--set", "faults.bad_update=[{participant: 1, round: 99, kind: nan}]"],
     "error: scenario key 'faults.bad_update[0].round': 99 is after the last round (2)"),
    ("bad update kind", lambda t, f: ["--set", "faults.bad_update=[{participant: 0, round: 1, kind: zeros}]"],
     "error: scenario key 'faults.bad_update[0].kind': 'zeros' is not allowed; allowed: ['nan', 'inf', "),
    ("drop probability", lambda t, f: ["--set", "faults.drop_upload=1.5"],
     "error: scenario key 'faults.drop_upload': 1.5 is not allowed; expected a number >= 0.0 and <= 1.0"),
    # privacy
    ("secure aggregation with a median", lambda t, f: ["--set", "server.aggregator=median",
                                                       "--set", "privacy.secure_aggregation={}"],
     "error: scenario key 'server.aggregator': 'median' is not allowed with privacy.secure_aggregation; a median "
     "or trimmed mean needs each update, and the server sees only their sum; use fedavg"),
    ("DP without its noise", lambda t, f: ["--set", "privacy.dp={clip: 1}"],
     "error: scenario key 'privacy.dp': neither of noise_multiplier and target_epsilon given; set exactly one"),
    # data and devices
    ("unknown partition key", lambda t, f: ["--set", "data.partition.alfa=0.5"],
     "error: data.partition: unknown key(s) ['alfa'] for scheme 'iid'"),
    ("alpha zero", lambda t, f: ["--set", "data.partition={scheme: dirichlet, alpha: 0}"],
     "error: data.partition.alpha: 0 must be a number > 0"),
    ("data source", lambda t, f: ["--set", "data.source=mnistt"],
     "error: data.source: 'mnistt' is unknown; allowed: ["),
    ("availability", lambda t, f: ["--set", "devices.availability=1.5"],
     "error: devices.availability=1.5: out of range; allowed: a probability in [0, 1]"),
    ("distribution", lambda t, f: ["--set", "devices.compute_speed={dist: gauss}"],
     "error: devices.compute_speed.dist='gauss': unknown distribution; allowed: ['choice', 'constant', "),
    ("trace missing", lambda t, f: ["--set", "devices.trace=/nowhere/trace.csv"],
     "error: devices.trace='/nowhere/trace.csv': file not found"),
    ("offline dataset", lambda t, f: ["--set", "data={source: ag_news}"],
     "error: data.source: dataset 'ag_news' (Hugging Face 'fancyzhx/ag_news') is not available offline"),
    ("data file missing", lambda t, f: [tiny_file(t), "--set",
                                        "data={source: files, files: {train: /nowhere/train.csv, text_column: text}}"],
     "/nowhere/train.csv"),
    ("column missing", lambda t, f: files_data(t, "sentence,label\n" + "hello world,0\n" * 20),
     "'text'"),
    ("empty file", lambda t, f: files_data(t, "text,label\n"), "train.csv has no rows"),
    ("unparsable file", lambda t, f: files_data(t, "text,label\na,0\nb,1,2\n"), "cannot read"),
    ("label out of range", lambda t, f: files_data(t, "text,label\n" + "a b,0\nc d,1\n" * 10 + "e f,7\n")
     + ["--set", "data.num_classes=2"], "7"),
    # scenario files and flags
    ("YAML syntax", lambda t, f: [str(t / "broken.yaml")],
     "is not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"),
    ("scenario file missing", lambda t, f: ["missing.yaml"], "error: scenario file 'missing.yaml' does not exist"),
    ("scenario a list", lambda t, f: [str(t / "list.yaml")], "expected a mapping of keys at the top level"),
    ("--set without =", lambda t, f: ["--set", "rounds"],
     "error: --set 'rounds': expected key=value, e.g. --set rounds=20"),
    ("--set into a value", lambda t, f: ["--set", "rounds.every=2"],
     "error: --set 'rounds.every=2': 'rounds' is not a section"),
    ("--out not empty", lambda t, f: ["--out", str(t / "full")], "exists and is not empty; choose another folder"),
    ("--address malformed", lambda t, f: ["--executor", "ray", "--address", "nowhere"],
     "error: --address 'nowhere' is not allowed; expected auto or HOST:PORT"),
    ("--address nothing there", lambda t, f: ["--executor", "ray", "--address", "127.0.0.1:1"],
     "error: --address 127.0.0.1:1: no Ray cluster there (tried a TCP connection to 127.0.0.1:1: Connection refused)"),
    # run folders
    ("resume: not a run folder", lambda t, f: ["--resume", str(t)], "is not a run folder (no config.yaml)"),
    ("resume: completed run", lambda t, f: ["--resume", str(shutil.copytree(f["finished"], t / "completed"))],
     "is a completed run; there is nothing to resume"),
    ("resume: checkpoint not a checkpoint",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], lambda d: (d / "checkpoint.pt").write_bytes(b"not a checkpoint"))],
     "checkpoint.pt is unreadable"),
    ("resume: checkpoint truncated",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], lambda d: truncate(d / "checkpoint.pt"))],
     "checkpoint.pt is unreadable"),
    ("resume: checkpoint of another version",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], rewrite_checkpoint(lambda s: s.update(checkpoint_format=0)))],
     "checkpoint.pt has checkpoint format 0, written by another version of fedgrow-ray; this version reads format 2"),
    ("resume: checkpoint of another scenario",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], rewrite_checkpoint(lambda s: s.update(scenario_sha256="0" * 64)))],
     "was written for a different scenario"),
    ("resume: config.yaml not YAML",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], lambda d: (d / "config.yaml").write_text("rounds: [1,\n"))],
     "config.yaml is not valid YAML at line 2"),
    ("resume: config.yaml edited", lambda t, f: ["--resume", stopped_run(t, f["finished"], edit_config)],
     "checkpoint.pt was written for a different scenario"),
    ("resume: a scenario this version refuses",  # as from an older version: the checkpoint matches it
     lambda t, f: ["--resume", stopped_run(t, f["finished"], lambda d: (edit_config(d), rewrite_checkpoint(
         lambda s: s.update(scenario_sha256=hashlib.sha256((d / "config.yaml").read_bytes()).hexdigest()))(d)))],
     "error: scenario key 'rounds': 0 is not allowed"),
    ("resume: metrics.jsonl damaged",
     lambda t, f: ["--resume", stopped_run(t, f["finished"], lambda d: (d / "metrics.jsonl").write_text("{\"method\n{}\n"))],
     "metrics.jsonl has a line that is not JSON"),
    # the cluster's resources (a real local Ray with 2 CPUs, joined with --address)
    ("hosts.actors beyond the cluster",
     lambda t, f: [tiny_file(t), "--executor", "ray", "--address", f["ray"], "--set", "hosts.actors=5"],
     "error: scenario key 'hosts.num_cpus': 1 per host x 5 participant hosts (hosts.actors=5) is 5 CPUs, "
     "more than the nodes hold (2 such hosts: node "),
    ("hosts.num_cpus beyond the cluster",
     lambda t, f: [tiny_file(t), "--executor", "ray", "--address", f["ray"], "--set", "hosts.actors=null",
                   "--set", "hosts.num_cpus=3"],
     "error: scenario key 'hosts.num_cpus': 3 per host x 1 participant hosts (one host per hosts.num_cpus=3 CPUs) "
     "is 3 CPUs, more than the nodes hold (0 such hosts: node "),
    ("hosts.memory_mb beyond the cluster",
     lambda t, f: [tiny_file(t), "--executor", "ray", "--address", f["ray"], "--set", "hosts.memory_mb=1e9"],
     "error: scenario key 'hosts.memory_mb': 1e+09 per host x 2 participant hosts (hosts.actors=2) is 2e+09 MiB "
     "of memory, more than the nodes hold (0 such hosts: node "),
    ("kill a host the cluster does not run",
     lambda t, f: [tiny_file(t), "--executor", "ray", "--address", f["ray"], "--set", "hosts.actors=null",
                   "--set", "faults.kill_host=[{host: 5, round: 1}]"],
     "error: scenario key 'faults.kill_host[0].host': 5 does not exist; this cluster runs 2 participant hosts"),
]


@pytest.fixture
def fixtures(request, tmp_path):
    (tmp_path / "broken.yaml").write_text("rounds: [1,\n")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("someone's file")
    return request


@pytest.mark.parametrize("name, make_args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(name, make_args, message, tmp_path, capsys, fixtures, cache):
    """Guards against bad input that starts a run, writes a run folder (or touches the one given
    to --resume), prints a traceback or several lines, or names the problem vaguely."""
    needs = {}
    if "resume:" in name and name != "resume: not a run folder":
        needs["finished"] = fixtures.getfixturevalue("finished_run")
    if "cluster" in name:
        needs["ray"] = ray_address(fixtures.getfixturevalue("ray_session"))
    args = make_args(tmp_path, needs)
    if args[0].startswith("-") and "--resume" not in args:
        args = [tiny_file(tmp_path)] + args
    if name == "checkpoint too wide":
        message = (f"error: scenario key 'model.checkpoints': participant 0's checkpoint '{tmp_path}/p0' has "
                   f"width=32, larger than model.intermediate width=24; small models grow into it")
    data_cache = tmp_path / "cache"
    shutil.copytree(cache, data_cache)  # prepared data is a cache, not the run's output
    out = tmp_path / "new-run"
    before = snapshot(tmp_path, data_cache)
    extra = [] if "--resume" in args or "--out" in args else ["--out", str(out)]
    executor = [] if "--executor" in args else ["--executor", "local"]
    capsys.readouterr()
    assert launch.main(args + extra + executor + ["--cache", str(data_cache)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err     # exactly one line ...
    assert message in err and err.startswith("error: "), err  # ... that names the problem
    assert "^" not in err and "Traceback" not in err
    assert not out.exists()
    assert snapshot(tmp_path, data_cache) == before            # nothing written anywhere else


def test_resume_takes_only_the_run_folder(tmp_path, capsys):
    """Guards against --resume silently mixing a run folder's scenario with new overrides."""
    with pytest.raises(SystemExit) as exit_:
        launch.main(["--resume", str(tmp_path), "--set", "rounds=3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--resume takes the run folder only" in err


def test_a_wrong_address_fails_at_once_from_the_command_line(tmp_path):
    """Guards against `launch.py --address` retrying for minutes against an address where no
    cluster listens, and leaving a run folder behind (config.yaml, status.json)."""
    out = tmp_path / "run"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--address", "127.0.0.1:1", "--out", str(out),
                           "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: --address 127.0.0.1:1: no Ray cluster there (tried a TCP connection to 127.0.0.1:1: "
        "Connection refused); start one with `ray start --head` or give the head's address"]
    assert not out.exists() and list(tmp_path.iterdir()) in ([], [tmp_path / "cache"])
    print(f"failed after {took:.1f} s (imports included)")


def test_the_shipped_bad_input_example_is_what_launch_prints(capsys):
    """Guards against the README's bad-input example drifting from what launch.py prints."""
    readme = (ROOT / "README.md").read_text()
    example = next(line for line in readme.splitlines() if line.startswith("error: scenario key 'training.local_step'"))
    assert launch.main(["--set", "training.local_step=3", "--executor", "local"]) == 2
    shown = capsys.readouterr().err.strip()
    assert shown.startswith(example.split("[")[0])
