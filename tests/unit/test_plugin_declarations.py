"""A new task or method is one module, its registry line and its test (issue 14).

What a task or a method can do is declared on it (`Task` in tasks/base.py, `Method` in
methods/base.py) and read from those members; nothing outside `tasks/` decides by comparing a
task's *name*, nothing outside `methods/` by comparing a method's name, and the Trainer calls the
method hooks the base class declares instead of looking them up with `getattr`.

The scanner is an AST walk over src/domaintune. It flags:

* comparisons (==, !=, in, not in) of a task or method name - `task.name`, `self.task.name`,
  `predictor.task.name`, `getattr(task, "name")`, `cfg.task`, `task_name`, `cfg.method`,
  `method.name`, `method_name`, or a local variable assigned from one of them - against string
  literals or tuples / lists / sets / dicts of them (inline, or a module or class constant);
* lookups keyed by such a name in such a table: `TASK_TYPES[task.name]`, `{...}.get(task.name, ...)`;
* `getattr` / `hasattr` of a declared member or hook (`getattr(method, "on_step", None)`).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import domaintune
from domaintune.methods import METHODS, get_method
from domaintune.methods.base import Method
from domaintune.tasks import TASKS, Task, get_task

SRC = Path(domaintune.__file__).resolve().parent

#: Task members (tasks/base.py) every registered task declares in its own module, with the values allowed.
TASK_MEMBERS = {
    "output_kind": lambda v: isinstance(v, str) and v != "",
    "output_activation": lambda v: v in (None, "softmax", "sigmoid", "identity"),
    "explain_refusal": lambda v: v is None or (isinstance(v, str) and v != ""),
    "peft_task_type": lambda v: v is None or (isinstance(v, str) and v.isupper()),
    "pooled_head_problem": lambda v: v in (None, "single_label", "multi_label"),
    "k_shot_classes": lambda v: v in (None, "label", "label_set"),
    "augmentable": lambda v: isinstance(v, bool),
    "prunable": lambda v: isinstance(v, bool),
    "onnx_exportable": lambda v: isinstance(v, bool),
    "labels_from_model_config": lambda v: isinstance(v, bool),
    "supports_continual": lambda v: isinstance(v, bool),
    "pair_input": lambda v: v in (None, True, False),
    "supports_probe_init": lambda v: isinstance(v, bool),
}
#: The safe "cannot" answers of the base class, for a task that has not thought about a capability.
TASK_DEFAULTS = {"output_activation": None, "explain_refusal": None, "peft_task_type": None,
                 "pooled_head_problem": None, "k_shot_classes": None, "augmentable": False, "prunable": False,
                 "onnx_exportable": False, "labels_from_model_config": False, "supports_continual": False,
                 "pair_input": None, "supports_probe_init": False}
#: Task methods with a base behaviour (the task overrides them where it needs to).
TASK_HOOKS = ("attach", "value_from_output", "described_as")
#: Method hooks the Trainer calls, and what callers read from a method.
METHOD_HOOKS = ("extra_loss", "on_step", "training_state", "load_training_state")
METHOD_MEMBERS = {"trains": lambda v: isinstance(v, bool), "uses_probe_init": lambda v: isinstance(v, bool)}
DECLARED = set(TASK_MEMBERS) | set(TASK_HOOKS) | set(METHOD_HOOKS) | set(METHOD_MEMBERS) | {"default_search_space"}


# ------------------------------------------------------------------------------------- the scanner
@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str  # "task" or "method" or "getattr"
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.code}"


def _terminal(node) -> str:
    """The last identifier of an expression: `a.b.task` -> task, `cfg` -> cfg."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _plugin_kind(term: str) -> str | None:
    t = term.lower()
    return "task" if "task" in t else "method" if "method" in t else None


def _name_kind(node, tainted: dict[str, str]) -> str | None:
    """"task" / "method" when `node` evaluates to a task's or a method's name, else None."""
    if isinstance(node, ast.Attribute):
        if node.attr == "name":  # task.name, self.task.name, predictor.task.name, method.name
            return _plugin_kind(_terminal(node.value))
        if node.attr == "task":  # cfg.task, prev_cfg.task: a config's task name (a Task object is never compared to text)
            return "task"
        if node.attr == "method" and _terminal(node.value).lower().endswith(("cfg", "config")):
            return "method"  # cfg.method, self.cfg.method (not an HTTP request's or an explainer's method)
    if isinstance(node, ast.Name):
        low = node.id.lower()
        if low.endswith("task_name"):
            return "task"
        if low.endswith("method_name"):
            return "method"
        return tainted.get(node.id)
    if (isinstance(node, ast.Call) and _terminal(node.func) == "getattr" and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and node.args[1].value == "name"):
        return _plugin_kind(_terminal(node.args[0]))
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in ("task", "method"):
        return node.slice.value  # a run record's r["task"]
    return None


def _is_str(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _literal(node, consts: set[str]) -> bool:
    """A string literal, a collection of them (dict: keys), or a constant bound to one."""
    if _is_str(node):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_str(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return bool(node.keys) and all(k is not None and _is_str(k) for k in node.keys)
    if isinstance(node, ast.Name):
        return node.id in consts
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
        return node.attr in consts
    if isinstance(node, ast.Call) and _terminal(node.func) in ("tuple", "list", "set", "frozenset", "sorted", "dict"):
        if len(node.args) == 1:
            arg = node.args[0]
            if isinstance(arg, (ast.GeneratorExp, ast.ListComp, ast.SetComp)):
                return _literal(arg.generators[0].iter, consts)
            return _literal(arg, consts)
    return False


def _constants(tree: ast.Module) -> set[str]:
    """Module- and class-level names bound to string collections (SUPPORTED_TASKS, TASK_TYPES, tasks = (...))."""
    consts: set[str] = set()
    bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for _ in range(2):  # twice: a constant built from another (tasks = tuple(TASK_TYPES))
        for body in bodies:
            for stmt in body:
                targets, value = ([stmt.target], stmt.value) if isinstance(stmt, ast.AnnAssign) else (
                    (stmt.targets, stmt.value) if isinstance(stmt, ast.Assign) else ([], None))
                if value is not None and _literal(value, consts):
                    consts.update(t.id for t in targets if isinstance(t, ast.Name))
    return consts


def _taint(scope) -> dict[str, str]:
    """Local names assigned a task or method name in `scope` (`name = task.name`, `m, t = cfg.method, cfg.train`)."""
    tainted: dict[str, str] = {}
    for _ in range(2):
        for node in ast.walk(scope):
            if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                both = isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                pairs = zip(target.elts, node.value.elts) if both else [(target, node.value)]
                for t, v in pairs:
                    kind = _name_kind(v, tainted)
                    if kind and isinstance(t, ast.Name):
                        tainted[t.id] = kind
    return tainted


COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def scan_source(source: str, path: str = "<string>", skip: frozenset[str] = frozenset()) -> list[Finding]:
    """Name checks and getattr'd declared members in one module; kinds in `skip` are allowed there."""
    tree = ast.parse(source)
    consts = _constants(tree)
    lines = source.splitlines()
    found: set[Finding] = set()

    def add(node, kind: str) -> None:
        if kind not in skip:
            found.add(Finding(path, node.lineno, kind, lines[node.lineno - 1].strip()))

    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for scope in scopes:
        tainted = _taint(scope) if scope is not tree else {}
        local = consts | {t.id for n in ast.walk(scope) if isinstance(n, ast.Assign) and _literal(n.value, consts)
                          for t in n.targets if isinstance(t, ast.Name)}  # kinds = {"classification": ...}
        for node in ast.walk(scope):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                for op, a, b in zip(node.ops, operands, operands[1:]):
                    if not isinstance(op, COMPARE_OPS):
                        continue
                    for one, other in ((a, b), (b, a)):
                        kind = _name_kind(one, tainted)
                        if kind and _literal(other, local):
                            add(node, kind)
            elif isinstance(node, ast.Subscript):  # TASK_TYPES[task.name]; not a table built from data
                kind = _name_kind(node.slice, tainted)
                if kind and _literal(node.value, local):
                    add(node, kind)
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get" and node.args and _literal(func.value, local):
                    kind = _name_kind(node.args[0], tainted)
                    if kind:
                        add(node, kind)
                if (_terminal(func) in ("getattr", "hasattr") and len(node.args) >= 2
                        and _is_str(node.args[1]) and node.args[1].value in DECLARED):
                    add(node, "getattr")
    return sorted(found, key=lambda f: (f.path, f.line))


def scan_tree(root: Path) -> list[Finding]:
    """Every finding under `root` (a copy of src/domaintune): task names are the business of `tasks/`,
    method names of `methods/`, and no module reads a declared member with getattr."""
    out: list[Finding] = []
    for path in sorted(Path(root).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        skip = frozenset({"task"} if rel.startswith("tasks/") else {"method"} if rel.startswith("methods/") else set())
        out += scan_source(path.read_text(encoding="utf-8"), rel, skip)
    return out


# ------------------------------------------------------------------------------------- the tests
def test_no_name_checks_outside_the_plugins_own_modules():
    findings = scan_tree(SRC)
    assert not findings, ("decide by a declared member (tasks/base.py Task, methods/base.py Method), not by name:\n"
                          + "\n".join(map(str, findings)))


# The checks this issue removed, as they were written (the scanner must see every one).
BEFORE = '''
SUPPORTED_TASKS = ("classification", "multilabel", "regression")
TASK_TYPES = {"classification": "SEQ_CLS", "ner": "TOKEN_CLS"}

class PeftMethod:
    tasks = tuple(TASK_TYPES)

    def build(self, task, cfg):
        if task.name not in TASK_TYPES:                                   # 9
            raise ValueError(task.name)
        self.task_type = TASK_TYPES[task.name]                            # 11

class Prompt(PeftMethod):
    tasks = tuple(t for t in TASK_TYPES if t != "ner")

    def configure(self, cfg):
        if cfg.task not in self.tasks:                                    # 17
            raise ValueError(cfg.task)

def augment_training(task, examples, cfg):
    if task.name not in SUPPORTED_TASKS:                                  # 21
        why = {"ner": "token positions"}.get(task.name, "it is not supported")  # 22

def apply_k_shot(train, k, seed, task):
    name = getattr(task, "name", "")
    if name == "multilabel":                                              # 26
        pass

def combine_mode(task_name, state):
    if task_name in ("classification", "ner"):                            # 30
        return "softmax"

def _kind(task):
    name = task.name
    kinds = {"classification": "softmax"}
    if name not in kinds:                                                 # 36
        raise ValueError(name)
    return kinds[name]                                                    # 38

def prune(teacher_pred, predictor, prev_cfg):
    if teacher_pred.task.name not in ("classification", "ner"):           # 41
        pass
    if predictor.task.name == "pair":                                     # 43
        pass
    if prev_cfg.task != "classification":                                 # 45
        pass

def default_space(cfg):
    m, t = cfg.method, cfg.train
    if m == "ia3":                                                        # 50
        pass
    if cfg.method in ("lora", "adalora"):                                 # 52
        pass

class Trainer:
    def __init__(self, method):
        self.on_step = getattr(method, "on_step", None)                   # 57

    def attach(self, task):
        attach = getattr(task, "attach", None)                            # 60
'''
# Not name checks: comparing names with each other, an explainer's or a request's method, strategies,
# a table built from data.
ALLOWED = '''
def check(runs, first, req, method, s, strategies, rows):
    if runs[0]["task"] != first["task"]:
        pass
    order = {m: i for i, m in enumerate(r["method"] for r in rows)}
    rows.sort(key=lambda r: order[r["method"]])
    if req.method not in ("auto", "ig", "occlusion"):
        pass
    if method == "occlusion":
        pass
    if any(s.name in ("ewc", "lwf") for s in strategies):
        pass
    x = get_task(cfg.task)
'''


def test_scanner_finds_every_kind_of_name_check():
    lines = {f.line for f in scan_source(textwrap.dedent(BEFORE))}
    assert lines == {9, 11, 17, 21, 22, 26, 30, 36, 38, 41, 43, 45, 50, 52, 57, 60}
    assert scan_source(ALLOWED) == []
    # inside the plugin's own package the name is its business (a task module may check its own subclasses)
    assert scan_source("def f(task):\n    return task.name == 'ner'\n", skip=frozenset({"task"})) == []


def _declared_below(cls: type, base: type, member: str) -> bool:
    """Whether `member` is set by `cls` or a parent of it other than `base` itself."""
    return any(member in vars(c) for c in cls.__mro__ if c is not base and issubclass(c, base))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_declares_its_capabilities(name):
    task = get_task(name)
    for member, valid in TASK_MEMBERS.items():
        assert _declared_below(type(task), Task, member), f"task {name} does not declare {member}"
        value = getattr(task, member)
        assert valid(value), f"task {name}: {member} = {value!r}"
    if not task.augmentable:
        assert task.not_augmentable_reason and _declared_below(type(task), Task, "not_augmentable_reason")
    if task.explain_refusal is not None:
        assert task.output_activation is not None  # a refusal explains an exception to the activation rule
    assert isinstance(task.described_as, str) and task.value_from_output(0.5) == 0.5  # fresh: no target scaling


def test_pair_capabilities_follow_its_mode():
    pair = get_task("pair")
    pair.load_state({"mode": "scoring", "target": {"mean": 3.0, "std": 2.0}})
    assert (pair.output_kind, pair.output_activation, pair.k_shot_classes) == ("value", "identity", None)
    assert pair.described_as == "pair scoring (numeric labels)" and pair.value_from_output(0.5) == 4.0
    assert pair.explain_refusal is None
    pair.load_state({"mode": "scoring", "pair_encoder": "bi", "target": {"mean": 0.0, "std": 1.0}})
    assert "bi-encoder" in pair.explain_refusal
    pair = get_task("pair")
    pair.load_state({"mode": "classification", "labels": ["0", "1"]})
    assert (pair.output_kind, pair.output_activation, pair.k_shot_classes) == ("label", "softmax", "label")
    assert pair.described_as == "pair classification"


def test_task_base_defaults_are_the_safe_answers():
    for member, default in TASK_DEFAULTS.items():
        assert getattr(Task, member) == default, member
    assert not hasattr(Task, "output_kind"), "output_kind has no default: every task says what it predicts"
    assert Task.not_augmentable_reason
    assert Task.attach(None, Path(".")) is None
    assert Task.value_from_output(None, 1.25) == 1.25
    assert Task.described_as.fget(SimpleNamespace(name="x")) == "task 'x'"


def test_method_base_hooks_are_no_ops():
    from domaintune.config import load_config

    base, model = Method(), torch.nn.Linear(2, 2)
    outputs = SimpleNamespace(loss=torch.tensor(1.0))
    assert base.extra_loss(model, {"input_ids": torch.zeros(1, 2)}, outputs) is None
    assert base.on_step(model, 1) is None
    assert base.training_state(model) == {}
    assert base.load_training_state(model, {}) is None
    assert base.trains is True and base.uses_probe_init is True
    space = base.default_search_space(load_config(None))
    assert {"train.lr", "train.batch_size", "train.epochs"} <= set(space)
    assert "train.epochs" not in base.default_search_space(load_config(None, ["train.max_steps=10"]))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_its_members(name):
    from domaintune.config import load_config
    from domaintune.tune import TuneError, _get

    method = get_method(name)
    for member, valid in METHOD_MEMBERS.items():
        assert valid(getattr(method, member)), f"method {name}: {member}"
    for hook in (*METHOD_HOOKS, "default_search_space"):
        mine, theirs = inspect.signature(getattr(method, hook)), inspect.signature(getattr(Method(), hook))
        assert list(mine.parameters) == list(theirs.parameters), f"method {name}: {hook}{mine}"
    cfg = load_config(None, [f"method={name}"])
    try:
        space = method.default_search_space(cfg)
    except TuneError:
        assert not method.trains, f"method {name} trains, so it has a default search space"
    else:
        data = cfg.model_dump(mode="json")
        for key in space:
            _get(data, key)  # a real config key (TuneError otherwise)


class Recording(Method):
    """A method that overrides every Trainer hook and records the calls."""

    def __init__(self):
        self.calls: list = []

    def extra_loss(self, model, batch, outputs):
        self.calls.append("extra_loss")
        return outputs.loss.new_zeros(())

    def on_step(self, model, global_step):
        self.calls.append(("on_step", global_step))

    def training_state(self, model):
        self.calls.append("training_state")
        return {"seen": torch.tensor([len(self.calls)], dtype=torch.float32)}

    def load_training_state(self, model, state):
        self.calls.append(("load_training_state", state["seen"].tolist()))


def _train(method, run_dir: Path, steps: int, resume: bool = False):
    from transformers import BertConfig, BertForSequenceClassification

    from domaintune.config import load_config
    from domaintune.training.loop import Trainer

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    feats = [{"input_ids": [1, 2 + i % 5, 3], "labels": i % 2} for i in range(8)]
    cfg = load_config(None, [f"train.max_steps={steps}", "train.batch_size=4", "train.num_threads=1",
                             "train.precision=fp32"]).train
    return Trainer(model, method, get_task("classification").collate, 0, feats, evaluate=None, cfg=cfg,
                   run_dir=run_dir, has_dev=False).train(resume=resume)


def test_trainer_calls_the_declared_hooks(tmp_path):
    from domaintune.training.checkpoint import METHOD_STATE

    rec = Recording()
    _train(rec, tmp_path / "rec", steps=2)
    assert rec.calls.count("extra_loss") == 2
    assert [c for c in rec.calls if isinstance(c, tuple)] == [("on_step", 1), ("on_step", 2)]
    assert "training_state" in rec.calls and list((tmp_path / "rec" / "checkpoints").glob(f"step-*/{METHOD_STATE}"))
    resumed = Recording()
    _train(resumed, tmp_path / "rec", steps=3, resume=True)
    assert resumed.calls[0][0] == "load_training_state" and ("on_step", 3) in resumed.calls

    _train(Method(), tmp_path / "base", steps=2)  # the no-op hooks: trains, and writes no method state
    assert list((tmp_path / "base" / "checkpoints").glob("step-*")) and \
        not list((tmp_path / "base" / "checkpoints").glob(f"step-*/{METHOD_STATE}"))
