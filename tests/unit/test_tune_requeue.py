"""Resuming a killed search: which interrupted trials are run again (real Optuna study on SQLite)."""

import optuna
from optuna.trial import TrialState

from domaintune.tune import _requeue_interrupted


def test_a_trial_killed_before_drawing_parameters_is_failed_not_repeated(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    with_params = study.ask()
    with_params.suggest_float("train.lr", 1e-5, 1e-3, log=True)
    study.ask()                                   # killed between creation and its first suggest
    _requeue_interrupted(study, TrialState)
    trials = study.trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in trials[:2])
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [with_params.params]   # only that one runs again
    _requeue_interrupted(study, TrialState)       # a second resume enqueues nothing more
    assert len([t for t in study.trials if t.state == TrialState.WAITING]) == 1
