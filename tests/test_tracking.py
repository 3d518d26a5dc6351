"""Mirroring the store's metrics to experiment trackers: TensorBoard event files and W&B offline runs
read back, MLflow's file store, resume without duplicates, a missing package named at preflight, a
failing tracker never stopping training, and a real tiny embedded run mirrored to TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.store import RunStore
from engine.tracking.backends import check_tracking
from engine.tracking.mirror import TrackerMirror
from tracker_files import tensorboard_scalars, wandb_history_when_written


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def _run(store, *overrides, name="tracked"):
    cfg = load_config(None, [f"run.name={name}", *overrides])
    return cfg, store.create_run(name, "embedded", cfg.to_dict())


def _write_two_steps(store, run_id):
    store.write_metrics(run_id, 1, {"reward/mean": 0.25, "loss": 1.5}, wall_time=1_700_000_001.0)
    store.write_metrics(run_id, 2, {"reward/mean": 0.5, "loss": 1.25}, wall_time=1_700_000_002.0)


def test_tensorboard_event_file_holds_the_store_metrics_with_their_steps_and_wall_times(store, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard backend needs: pip install tensorboard")
    cfg, run = _run(store, "tracking.backends=[tensorboard]")
    mirror = TrackerMirror.for_run(cfg, store, run, log=lambda _m: None)
    _write_two_steps(store, run.id)
    assert mirror.sync() == 4
    store.write_metrics(run.id, 2, {"val/accuracy": 0.75}, wall_time=1_700_000_003.0)  # lands after its step
    store.write_metrics(run.id, 3, {"reward/mean": 0.625}, wall_time=1_700_000_004.0)
    mirror.close()
    scalars = tensorboard_scalars(run.run_dir / "tensorboard" / "attempt-1")
    assert [(s, v) for s, v, _ in scalars["reward/mean"]] == [(1, 0.25), (2, 0.5), (3, 0.625)]
    assert [(s, v) for s, v, _ in scalars["val/accuracy"]] == [(2, 0.75)]
    assert [w for _, _, w in scalars["loss"]] == [1_700_000_001.0, 1_700_000_002.0]
    state = store.tracker_state(run.id, 1, "tensorboard")
    assert state["cursor"] > 0 and state["external_id"].endswith("attempt-1")

    # a resumed process continues from the stored cursor: nothing is sent twice
    again = TrackerMirror.for_run(cfg, store, run, log=lambda _m: None)
    assert again.sync() == 0
    store.write_metrics(run.id, 4, {"reward/mean": 0.75}, wall_time=1_700_000_005.0)
    assert again.sync() == 1
    again.close()
    scalars = tensorboard_scalars(run.run_dir / "tensorboard" / "attempt-1")
    assert [s for s, _, _ in scalars["reward/mean"]] == [1, 2, 3, 4]


def test_wandb_offline_run_holds_the_store_metrics_and_a_resume_continues_the_same_run(store, tmp_path):
    pytest.importorskip("wandb", reason="the wandb backend needs: pip install wandb")
    cfg, run = _run(store, "tracking.backends=[wandb]", "tracking.wandb_mode=offline",
                    f"tracking.wandb_dir={tmp_path / 'wb'}", "tracking.project=ropd-test")
    mirror = TrackerMirror.for_run(cfg, store, run, log=print)
    _write_two_steps(store, run.id)
    mirror.close()
    assert mirror.backends == {}
    (folder,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    run_id, history = wandb_history_when_written(folder, 2)
    assert run_id == store.tracker_state(run.id, 1, "wandb")["external_id"]
    assert history == [(1, {"reward/mean": 0.25, "loss": 1.5}), (2, {"reward/mean": 0.5, "loss": 1.25})]
    # the run config went along, secrets scrubbed
    assert (folder / "files").is_dir()

    store.write_metrics(run.id, 3, {"reward/mean": 0.75}, wall_time=1_700_000_009.0)
    resumed = TrackerMirror.for_run(cfg, store, run, log=print)
    resumed.close()
    folders = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    last_id, last = wandb_history_when_written(folders[-1], 1)
    assert last_id == run_id and last == [(3, {"reward/mean": 0.75})]


def test_mlflow_file_store_gets_metrics_with_safe_names(store, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow backend needs: pip install mlflow-skinny (not in the dev extra)")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database store by default
    uri = (tmp_path / "mlruns").as_uri()
    cfg, run = _run(store, "tracking.backends=[mlflow]", f"tracking.mlflow_tracking_uri={uri}")
    mirror = TrackerMirror.for_run(cfg, store, run, log=print)
    _write_two_steps(store, run.id)
    store.write_metrics(run.id, 2, {"val-core/demo_math/acc/mean@4": 0.5}, wall_time=1_700_000_003.0)
    mirror.close()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    mlflow_run = client.get_run(store.tracker_state(run.id, 1, "mlflow")["external_id"])
    assert mlflow_run.data.tags["ropd.run"] == "tracked" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["trainer.steps"] == str(cfg.trainer.steps)
    hist = client.get_metric_history(mlflow_run.info.run_id, "reward/mean")
    assert [(m.step, m.value, m.timestamp) for m in hist] == [(1, 0.25, 1_700_000_001_000), (2, 0.5, 1_700_000_002_000)]
    assert [m.value for m in client.get_metric_history(mlflow_run.info.run_id, "val-core/demo_math/acc/mean_4")] == [0.5]


@pytest.mark.parametrize("backend, module, command", [("wandb", "wandb", "pip install wandb"),
                                                      ("tensorboard", "tensorboard", "pip install tensorboard"),
                                                      ("mlflow", "mlflow", "pip install mlflow-skinny")])
def test_a_missing_package_is_named_with_its_pip_command_at_preflight(backend, module, command, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # how Python marks a module that cannot be imported
    cfg = load_config(None, [f"tracking.backends=[{backend}]"])
    with pytest.raises(ConfigError, match=f"tracking.backends has '{backend}' but the {module} package") as e:
        check_tracking(cfg)
    assert command in e.value.hint
    # the run's own start checks the same (a worker started without the preflight)
    with pytest.raises(ConfigError, match=f"tracking.backends has '{backend}'"):
        TrackerMirror.for_run(cfg, None, None)


def test_tracking_is_off_by_default_and_bad_backends_are_config_errors():
    assert load_config(None, []).tracking.backends == []
    assert TrackerMirror.for_run(load_config(None, []), None, None) is None
    with pytest.raises(ConfigError, match="tracking.backends\\[0\\]' must be one of 'wandb', 'tensorboard', 'mlflow'"):
        load_config(None, ["tracking.backends=[neptune]"])
    from engine.config import build_config

    notes = check_tracking(build_config({"run": {"backend": "verl"}, "tracking": {"backends": ["wandb"]},
                                         "verl": {"overrides": ["trainer.logger=[console,file,wandb]"]}}))
    assert any("second" in n and "wandb" in n for n in notes)


def test_a_failing_tracker_is_reported_and_training_goes_on(store, tmp_path):
    pytest.importorskip("tensorboard")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the TensorBoard folder should be")
    cfg, run = _run(store, "tracking.backends=[tensorboard]", f"tracking.tensorboard_dir={blocker}")
    lines = []
    mirror = TrackerMirror.for_run(cfg, store, run, log=lines.append)
    _write_two_steps(store, run.id)
    assert mirror.sync() == 0
    mirror.close()
    warnings = [e["message"] for e in store.events(run.id) if e["kind"] == "warning"]
    assert warnings and "tracker tensorboard could not start" in warnings[0] and "stay in the run store" in warnings[0]
    assert any("tracker tensorboard" in line for line in lines)
    assert len(store.metric_series(run.id, "loss")) == 2  # the store has everything


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def test_embedded_run_mirrors_every_step_to_tensorboard(tmp_path, tiny_model, store):
    pytest.importorskip("tensorboard")
    from engine.trainers import embedded

    cfg, run = _run(store, f"trainer.model={tiny_model}", "trainer.steps=2", "trainer.prompts_per_step=2",
                    "trainer.rollouts=2", "trainer.max_new_tokens=4", "trainer.threads=1", "task.num_prompts=4",
                    f"teacher.index={tmp_path / 'teacher.jsonl'}", "judge.mode=offline", "templates.watch=false",
                    "trainer.eval_every=2", "trainer.eval_prompts=2", "tracking.backends=[tensorboard]")
    assert embedded.run(cfg, store, run, log=lambda _m: None).status == "finished"
    scalars = tensorboard_scalars(run.run_dir / "tensorboard" / "attempt-1")
    for key in ("reward/mean", "loss", "time/step", "score/groups"):
        stored = store.metric_series(run.id, key)
        assert [s for s, _, _ in scalars[key]] == [s for s, _ in stored], key
        assert [v for _, v, _ in scalars[key]] == pytest.approx([v for _, v in stored], rel=1e-6), key  # float32
    assert [s for s, _, _ in scalars["val/accuracy"]] == [2]  # evaluated after the last step
    assert [s for s, _, _ in scalars["time/checkpoint"]] == [1, 2]


@pytest.mark.slow
def test_verl_launcher_mirrors_ingested_steps_and_stops_at_the_judge_budget(tmp_path, monkeypatch):
    """The verl launcher with a stand-in main_ppo (see tests/test_verl_launcher.py): an LLM judge over HTTP
    priced per role, TensorBoard mirroring of the ingested steps, and a budget that the first step uses
    up: the launcher stops verl before its second step and returns exit code 5."""
    pytest.importorskip("ray")
    pytest.importorskip("tensorboard")
    from engine.judging.cost import EXIT_BUDGET
    from engine.verl_backend import launcher
    from loopback_server import LoopbackJudgeServer
    from test_verl_launcher import FAKE_MAIN

    script = tmp_path / "fake_main_ppo.py"
    # three steps, each a few seconds long (as real ones are), so the launcher sees step 1 before step 2 ends
    main = FAKE_MAIN.replace("for step in (start + 1, start + 2):", "for step in range(start + 1, start + 4):")
    main = main.replace('    if os.environ.get("FAKE_PIDFILE"):',
                        '    __import__("time").sleep(6)\n    if os.environ.get("FAKE_PIDFILE"):')
    assert main.count("sleep(6)") == 1
    script.write_text(main)
    monkeypatch.setenv(launcher.MAIN_CMD_ENV, f"{sys.executable} {script}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = tmp_path / "student-model"
    model.mkdir()
    with LoopbackJudgeServer() as srv:
        judge = [f"judge.{r}.{k}" for r in ("rubricator", "verifier") for k in (f"base_url={srv.base_url}", "model=j")]
        cfg = load_config(None, ["run.backend=verl", "run.name=verl-capped", "judge.mode=llm", *judge,
                                 "judge.rubricator.price_in_per_mtok=1", "judge.verifier.price_in_per_mtok=1",
                                 "judge.budget_usd=0.000001", "task.num_prompts=4", "scorer.k=2",
                                 f"teacher.index={tmp_path / 'teacher_index.jsonl'}", f"verl.model_path={model}",
                                 "verl.group_timeout_s=60", "tracking.backends=[tensorboard]"])
        store = RunStore(tmp_path / "runs" / "ropd.db")
        run = store.create_run("verl-capped", "verl", cfg.to_dict())
        assert launcher.run(cfg, store, run, resume=False) == EXIT_BUDGET
    steps = [s["step"] for s in store.steps(run.id)]
    assert steps == [1]  # verl was stopped during its second step
    total = dict(store.metric_series(run.id, "cost/total_usd"))
    assert total[1] > 0
    assert any(e["kind"] == "budget_reached" for e in store.events(run.id))
    scalars = tensorboard_scalars(run.run_dir / "tensorboard" / "attempt-1")
    assert [s for s, _, _ in scalars["critic/score/mean"]][:1] == [1]
    assert scalars["cost/total_usd"][0][1] == pytest.approx(total[1], rel=1e-6)
    store.close()
