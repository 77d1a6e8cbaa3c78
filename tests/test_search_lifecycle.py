"""A search's life cycle with real processes: extend a finished search, refuse an incompatible
change (one line, exit 6, nothing changed on disk) or a first trial outside the space (one line,
exit 2), accept a compatible one, and the chief's
decisions on a failed or a Hyperband search (its oracle and journal in-process)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import TINY, make_dataset, merge
from local_support import local_run

EXIT_INCOMPATIBLE = 6


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (its path and content), to prove that nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ktc_local(tmp: Path, config: dict, *flags: str, workers: int = 2, timeout: float = 600) -> tuple[int, str]:
    (tmp / "search.yaml").write_text(yaml.safe_dump(config))
    args = ["--workers", str(workers), "--quiet", "--config", str(tmp / "search.yaml"), "--data", str(tmp / "data"),
            "--results", str(tmp / "results"), *flags]
    with local_run(args, tmp / "results" / "ktc-search") as run:
        code = run.finish(timeout=timeout)
    return code, run.output


def trial_files(search: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(search.glob("trial_*/trial.json"))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A random search finished at 2 trials."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    make_dataset(tmp / "data")
    config = merge(TINY, {"max_trials": 2, "epochs": 1})
    code, output = ktc_local(tmp, config)
    assert code == 0, output[-3000:]
    assert len(trial_files(tmp / "results" / "ktc-search")) == 2
    return {"tmp": tmp, "config": config, "search": tmp / "results" / "ktc-search"}


def test_a_changed_objective_is_refused_in_one_line_with_exit_6_and_nothing_changes(finished):
    search = finished["search"]
    before = tree_digest(search / "ktc-state") | {"trials": json.dumps(trial_files(search))}
    code, output = ktc_local(finished["tmp"], merge(finished["config"], {"objective": "val_iou"}), workers=1)
    assert code == EXIT_INCOMPATIBLE, output[-3000:]
    refusal = [line for line in output.splitlines() if "refusing to start" in line]
    assert refusal == [("ktc chief: refusing to start: search 'ktc-search': objective is val_iou in the config but "
                        "val_f1 in the stored search; nothing was changed: set objective back to val_f1 to go on "
                        "with this search, or give the new one a search_id of its own (search_id, --search-id, "
                        "KTC_SEARCH_ID)")], output[-3000:]
    assert "Traceback" not in output
    assert tree_digest(search / "ktc-state") | {"trials": json.dumps(trial_files(search))} == before


def test_a_range_that_excludes_a_trials_value_is_refused_naming_the_hyperparameter(finished):
    search = finished["search"]
    used = {t["hyperparameters"]["values"]["start_neurons"] for t in trial_files(search)}
    excluded = min(used)
    low = excluded + 8  # a range that starts above a value some trial used, whichever the trials drew
    space = {"start_neurons": {"min": low, "max": low + 16, "step": 8}}
    before = tree_digest(search / "ktc-state")
    code, output = ktc_local(finished["tmp"], merge(finished["config"], {"space": space}), workers=1)
    assert code == EXIT_INCOMPATIBLE, output[-3000:]
    line = next(line for line in output.splitlines() if "refusing to start" in line)
    assert f"hyperparameter start_neurons is Int {low}..{low + 16} step 8 in the config but " \
           f"Int 8..16 step 8 in the stored search (it excludes the value {excluded} of trial" in line, line
    assert tree_digest(search / "ktc-state") == before


def test_a_first_trial_outside_the_space_stops_ktc_local_in_the_chiefs_one_line(tmp_path):
    make_dataset(tmp_path / "data")
    code, output = ktc_local(tmp_path, merge(TINY, {"first_trials": [{"depth": 3}]}), workers=1)
    assert code == 2, output[-3000:]
    lines = output.splitlines()
    refusal = [line for line in lines if line.startswith("ktc chief: ")]
    assert len(refusal) == 1 and refusal[0].startswith(
        "ktc chief: first_trials.0: 'depth' is not a hyperparameter of the search space"), output[-3000:]
    # The worker was stopped because the chief refused: its exit is no news, and nothing failed.
    assert not [line for line in lines if "exited with" in line or "search failed" in line], output[-3000:]
    assert "Traceback" not in output
    assert not (tmp_path / "results" / "ktc-search" / "ktc-state").exists()


def test_a_raised_max_trials_reopens_the_finished_search_and_runs_the_new_trials(finished):
    """Also a compatible change of the space (a range widened) and of a setting (the lease),
    applied and journaled; the old trials stay as they were."""
    search = finished["search"]
    old = {t["trial_id"]: t for t in trial_files(search)}
    config = merge(finished["config"], {"lease_seconds": 90.0,
                                        "space": {"start_neurons": {"min": 8, "max": 24, "step": 8}}})
    code, output = ktc_local(finished["tmp"], config, "--max-trials", "3")  # the budget as a user raises it
    assert code == 0, output[-3000:]
    chief_log = (search / "local" / "chief.log").read_text()
    assert "chief: search ktc-search reopened: max_trials raised from 2 to 3 (2 trials so far)" in chief_log
    assert "config change accepted: hyperparameter start_neurons: Int 8..16 step 8 -> Int 8..24 step 8" in chief_log
    assert "config change accepted: lease_seconds: 60.0 -> 90.0" in chief_log
    trials = {t["trial_id"]: t for t in trial_files(search)}
    assert len(trials) == 3 and {t["status"] for t in trials.values()} == {"COMPLETED"}
    assert all(trials[trial_id] == trial for trial_id, trial in old.items())
    assert "Search ktc-search (random): 3 trials, 3 completed" in output
    status = json.loads((search / "status.json").read_text())
    assert status["done"] and status["max_trials"] == 3 and status["completed"] == 3
    # The journal holds the definition this start accepted: the budget and the widened space.
    records = [json.loads(line) for path in sorted((search / "ktc-state").glob("journal-*.jsonl"))
               for line in path.read_text().splitlines()]
    definition = [r["definition"] for r in records if "definition" in r][-1]
    assert definition["budget"]["max_trials"] == 3
    neurons = next(h for h in definition["space"] if h["config"]["name"] == "start_neurons")
    assert neurons["config"]["max_value"] == 24

    # The same command again: complete, nothing started.
    again = subprocess.run([sys.executable, "-m", "kt_cluster", "local", "--quiet", "--config",
                            str(finished["tmp"] / "search.yaml"), "--data", str(finished["tmp"] / "data"),
                            "--results", str(finished["tmp"] / "results"), "--max-trials", "3"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "is already complete" in again.stdout.splitlines()[0], again.stdout


# --- the chief's decisions, on its real oracle and journal (in-process, no training) ------------

def chief_config(tmp: Path, **fields):
    from kt_cluster.core.config import from_dict

    return from_dict(merge(TINY, {"results": str(tmp / "results"), "data": {"path": str(tmp / "data")}, **fields}))


def open_chief(config):
    """`ktc chief`'s start (build, restore, reconcile); the journal closed again afterwards."""
    from kt_cluster.chief.main import open_search

    tuner, restored, reopened = open_search(config)
    return tuner.oracle, reopened


def run_trials(oracle, count: int, status: str = "COMPLETED") -> None:
    """`count` trials created and ended as a worker would (score = trial number)."""
    for i in range(count):
        trial = oracle.create_trial("w0", session="s0")
        if trial.status != "RUNNING":
            return
        oracle.update_trial(trial.trial_id, {"val_f1": 0.1 + 0.01 * i}, step=0, tuner_id="w0", session="s0")
        trial.status = status
        if status == "FAILED":
            trial.message = "ValueError: broken on purpose"
        oracle.end_trial(trial, tuner_id="w0", session="s0")


def test_a_search_that_spent_its_worker_hours_reopens_when_they_are_raised_past_what_it_spent(tmp_path, capsys):
    """36 worker seconds a trial (0.01 hours); a budget of 0.02 hours ends the search after two."""
    def spend(oracle):
        while (trial := oracle.create_trial("w0", session="s0")).status == "RUNNING":
            oracle.update_trial(trial.trial_id, {"val_f1": 0.5, "epoch_seconds": 36.0}, step=0, tuner_id="w0",
                                session="s0")
            trial.status = "COMPLETED"
            oracle.end_trial(trial, tuner_id="w0", session="s0")
        oracle.journal.close()
        return len(oracle.trials)

    def config(**budget):  # 16 configurations
        return chief_config(tmp_path, max_trials=10, space={"start_neurons": {"min": 8, "max": 64}}, **budget)

    oracle, _ = open_chief(config(max_worker_hours=0.02))
    assert spend(oracle) == 2 and oracle.done and oracle.failure is None

    oracle, reopened = open_chief(config(max_worker_hours=0.015))
    assert not reopened and oracle.done  # lowered: still over
    oracle.journal.close()
    oracle, reopened = open_chief(config(max_worker_hours=0.019))
    assert not reopened and oracle.done  # raised, but not past the 0.02 hours already spent
    assert "but its trials have spent 0.02 worker hours, max_worker_hours (0.019): raise max_worker_hours" in \
        capsys.readouterr().out
    oracle.journal.close()
    oracle, reopened = open_chief(config(max_worker_hours=0.04))
    assert reopened and spend(oracle) == 4
    oracle, reopened = open_chief(config())  # no limit: on to max_trials
    assert reopened and spend(oracle) == 10


def test_a_failed_search_reopens_only_when_its_failure_limit_is_raised(tmp_path, capsys):
    config = chief_config(tmp_path, max_trials=10)
    oracle, _ = open_chief(config)
    run_trials(oracle, 3, status="FAILED")  # max_consecutive_failed_trials: 3
    assert oracle.done and "consecutive failures" in oracle.failure
    oracle.journal.close()

    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=20))
    assert not reopened and oracle.done and oracle.failure
    assert "a raised budget does not run it again: raise max_consecutive_failed_trials (now 3)" in capsys.readouterr().out
    oracle.journal.close()

    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=20, max_consecutive_failed_trials=5))
    assert reopened and not oracle.done and oracle.failure is None
    assert oracle.create_trial("w0", session="s0").status == "RUNNING"
    oracle.journal.close()
    # Journaled: the next start finds the search going on, the new limit stored.
    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=20, max_consecutive_failed_trials=5))
    assert not reopened and not oracle.done and oracle.stored_definition["budget"]["max_consecutive_failed_trials"] == 5
    oracle.journal.close()


def test_extending_a_hyperband_search_takes_more_iterations_not_just_more_trials(tmp_path, capsys):
    """max_epochs 3, factor 3: one iteration is two brackets, 3 + 1 trials and 2 trials."""
    fields = {"tuner": "hyperband", "max_epochs": 3, "hyperband_factor": 3, "max_trials": 30,
              "space": {"start_neurons": {"min": 8, "max": 128, "step": 8}}}  # configurations to spare
    oracle, _ = open_chief(chief_config(tmp_path, **fields))
    run_trials(oracle, 10)
    assert oracle.done and not oracle.failure and len(oracle.trials) == 6
    oracle.journal.close()

    oracle, reopened = open_chief(chief_config(tmp_path, **fields | {"max_trials": 40}))
    assert not reopened and oracle.done
    assert "but Hyperband has run all its brackets (1 hyperband_iterations): raise hyperband_iterations" \
        in capsys.readouterr().out
    oracle.journal.close()

    oracle, reopened = open_chief(chief_config(tmp_path, **fields | {"hyperband_iterations": 2}))
    assert reopened and oracle.hyperband_iterations == 2
    trial = oracle.create_trial("w0", session="s0")
    # A new iteration starts with the most aggressive bracket again: its first round, 1 epoch.
    assert trial.status == "RUNNING" and trial.hyperparameters.values["tuner/epochs"] == 1
    assert trial.hyperparameters.values["tuner/round"] == 0
    oracle.journal.close()
    oracle, reopened = open_chief(chief_config(tmp_path, **fields | {"hyperband_iterations": 2}))
    assert not reopened and oracle.hyperband_iterations == 2 and not oracle.done  # from the journal
    oracle.journal.close()


def test_adding_a_hyperparameter_is_refused_and_adding_a_choice_is_accepted(tmp_path):
    from kt_cluster.chief.definition import IncompatibleChange

    oracle, _ = open_chief(chief_config(tmp_path, max_trials=2))
    run_trials(oracle, 3)  # the third ask hears that the search is over
    assert oracle.done and len(oracle.trials) == 2
    oracle.journal.close()
    state = tmp_path / "results" / "ktc-search" / "ktc-state"
    before = tree_digest(state)
    with pytest.raises(IncompatibleChange, match=r"hyperparameter learning_rate is Float 0.0001..0.01 log in the "
                                                 r"config but absent in the stored search \(the stored trials have "
                                                 r"no value for it\)"):
        open_chief(chief_config(tmp_path, space={"learning_rate": {"min": 1e-4, "max": 1e-2}}))
    with pytest.raises(IncompatibleChange, match=r"^search 'ktc-search': tuner is bayesian in the config but random"):
        open_chief(chief_config(tmp_path, tuner="bayesian"))
    assert tree_digest(state) == before

    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=3, space={"activation": ["relu", "elu", "mish"]}))
    assert reopened
    assert oracle.hyperparameters.get("activation") in ("relu", "elu", "mish")
    assert [hp.values for hp in oracle.hyperparameters.space if hp.name == "activation"] == [["relu", "elu", "mish"]]
    oracle.journal.close()


def test_a_search_stored_before_the_lr_schedule_existed_goes_on_only_at_a_constant_rate(tmp_path):
    """Its trials trained at a constant rate: a start under the cosine default is refused, one
    that pins `lr_schedule: constant` goes on."""
    from kt_cluster.chief.definition import IncompatibleChange

    oracle, _ = open_chief(chief_config(tmp_path, max_trials=2, lr_schedule="constant"))
    run_trials(oracle, 3)
    oracle.journal.close()
    state = _forget_in_stored_definition(tmp_path, "lr_schedule")
    before = tree_digest(state)
    with pytest.raises(IncompatibleChange, match="lr_schedule is cosine in the config but constant in the stored "
                                                 "search; nothing was changed: set lr_schedule back to constant"):
        open_chief(chief_config(tmp_path, max_trials=3))
    assert tree_digest(state) == before
    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=3, lr_schedule="constant"))
    assert reopened
    oracle.journal.close()


def test_a_search_stored_before_augmentation_existed_goes_on_only_without_it(tmp_path):
    from kt_cluster.chief.definition import IncompatibleChange

    oracle, _ = open_chief(chief_config(tmp_path, max_trials=2))
    run_trials(oracle, 3)
    oracle.journal.close()
    state = _forget_in_stored_definition(tmp_path, "data.augment")
    before = tree_digest(state)
    augmented = chief_config(tmp_path, max_trials=3)
    augmented.data.augment.shift = 0.1
    with pytest.raises(IncompatibleChange, match=r"data.augment is \{'scale': 0.0, 'shift': 0.1\} in the config but "
                                                 r"\{'scale': 0.0, 'shift': 0.0\} in the stored search"):
        open_chief(augmented)
    assert tree_digest(state) == before
    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=3))
    assert reopened
    oracle.journal.close()


def _forget_in_stored_definition(tmp_path: Path, field: str) -> Path:
    """Remove `field` from the journal's stored definition, as a release before it wrote it."""
    state = tmp_path / "results" / "ktc-search" / "ktc-state"
    for path in state.glob("journal-*.jsonl"):
        lines = []
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith('{"definition"'):
                record = json.loads(line)
                del record["definition"]["meaning"][field]
                line = json.dumps(record) + "\n"
            lines.append(line)
        path.write_text("".join(lines))
    return state


def test_a_state_without_a_stored_definition_takes_the_first_start_as_its_definition(tmp_path, capsys):
    """A journal written before definitions were stored: the start says so, compares the space all
    the same, and journals the definition it accepted."""
    from kt_cluster.chief.definition import IncompatibleChange

    oracle, _ = open_chief(chief_config(tmp_path, max_trials=2))
    run_trials(oracle, 3)
    oracle.journal.close()
    state = tmp_path / "results" / "ktc-search" / "ktc-state"
    for path in state.glob("journal-*.jsonl"):
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith('{"definition"')))
    with pytest.raises(IncompatibleChange, match="hyperparameter start_neurons is Int 32..48 step 8 in the config"):
        open_chief(chief_config(tmp_path, space={"start_neurons": {"min": 32, "max": 48, "step": 8}}))
    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=3))
    assert "has no stored definition (its state predates them): this start's config is taken as its definition" \
        in capsys.readouterr().out
    assert reopened and oracle.stored_definition["budget"]["max_trials"] == 3  # journaled
    oracle.journal.close()
    oracle, reopened = open_chief(chief_config(tmp_path, max_trials=3))
    assert not reopened and not oracle.done and "has no stored definition" not in capsys.readouterr().out
    oracle.journal.close()
