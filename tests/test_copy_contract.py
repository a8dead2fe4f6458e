"""The copy contract (STYLE.md): a piece a user copies runs when its lines, and what they name in their own file, are
pasted under the torch imports. Done here as a user does it: each piece's source is taken from its stage file (ast),
written with only `import torch`, `import torch.nn as nn`, `import torch.nn.functional as F` and the standard-library
imports it names into a fresh file in a temporary folder outside the clone, and run in ONE Python process started
in that folder in isolated mode (-I: no PYTHONPATH, not the clone on the path):
  the activations    forward and backward inside a torchvision ResNet-18 (each nn.ReLU replaced), and their values
                     and derivatives against a reference
  SmoothGradReLU     the same, with its smooth backward on: ReLU's values, sigmoid(10 x)'s gradient
  pgd                an attack on a ResNet-18 that stays in the eps-ball and in [0, 1]
  the training step  one step (beside pgd, which it calls) that changes the weights
A piece that names a module constant (a default that is not a literal) or anything but torch, the standard library
and its own file's functions and classes fails before it is run. docs/SNIPPETS.md shows exactly these pieces: its
blocks marked "# torch alone" hold each piece's source verbatim and run, in order, in the same process.
`python tests/test_copy_contract.py` prints each piece's pasted size."""
import ast
import builtins
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

HEADER = ["import torch", "import torch.nn as nn", "import torch.nn.functional as F"]
TORCH_NAMES = {"torch", "nn", "F"}
# piece -> (its stage file, the definition a user copies, the pieces pasted beside it, the most lines it may have)
PIECES = {
    "ParametricSoftplus": ("01_activations.py", "ParametricSoftplus", (), 30),
    "SmoothReLU": ("01_activations.py", "SmoothReLU", (), 30),
    "ELU": ("01_activations.py", "ELU", (), 30),
    "SmoothGradReLU": ("01_activations.py", "SmoothGradReLU", (), 45),          # with its autograd Function
    "pgd": ("02_pgd.py", "pgd", (), 70),
    "adversarial_training_step": ("03_adv_train.py", "adversarial_training_step", ("pgd",), 40),   # beside pgd
}


def module_of(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return tree, open(os.path.join(ROOT, path)).read()


def source_of(text, node):
    """A definition's lines as they stand in the file, its decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(text.splitlines()[first - 1:node.end_lineno])


def free_names(node):
    """The names a definition reads that it does not bind itself (nor are builtins)."""
    bound, read = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (read if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return read - bound - set(dir(builtins))


def paste(piece, given=()):
    """(the import lines, the definitions' sources in order) of `piece` as a user pastes it: its definition and the
    functions and classes of its own file it names, under the torch imports and the standard-library imports it names.
    `given`: names the pieces pasted beside it define. Fails on a name that is none of these."""
    path, name, _, _ = PIECES[piece]
    tree, text = module_of(path)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stdlib_imports = {}   # name -> its import line, for the file's standard-library imports
    for n in tree.body:
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            top = (n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0]
            if top in sys.stdlib_module_names:
                for a in n.names:
                    stdlib_imports[(a.asname or a.name).split(".")[0]] = ast.get_source_segment(text, n)
    imports, order, todo = list(HEADER), [], [name]
    while todo:
        d = todo.pop()
        if d in order:
            continue
        order.insert(0, d)
        for free in sorted(free_names(defs[d])):
            if free in defs:
                todo.append(free)
            elif free in stdlib_imports:
                imports += [stdlib_imports[free]] if stdlib_imports[free] not in imports else []
            elif free not in TORCH_NAMES and free not in given:
                pytest.fail(f"{piece} ({path}) names {free!r}, which is neither torch, the standard library nor a function "
                            f"or class of its file (a module constant as a default? another stage?): it does not run pasted")
    return imports, [source_of(text, defs[d]) for d in order]


def lines(sources):
    return sum(len(s.splitlines()) for s in sources)


def pasted():
    """piece -> (the file a user would have, its pasted lines, those of the pieces beside it)."""
    out = {}
    for piece, (_, _, beside, _) in PIECES.items():
        imports, sources, beside_sources = [], [], []
        for other in beside:
            imp, src = paste(other)
            imports += [i for i in imp if i not in imports]
            beside_sources += src
        imp, src = paste(piece, given=set(beside))
        imports += [i for i in imp if i not in imports]
        sources += src
        out[piece] = ("\n".join(imports) + "\n\n\n" + "\n\n\n".join(beside_sources + sources) + "\n", lines(sources),
                      lines(beside_sources))
    return out


def report(sizes):
    return "\n".join(f"  {piece:<26} {n:>3} lines pasted (limit {PIECES[piece][3]})"
                     + (f", beside {', '.join(PIECES[piece][2])} ({m} lines)" if m else "") for piece, (_, n, m) in sizes.items())


SNIPPETS = os.path.join(ROOT, "docs", "SNIPPETS.md")


def torch_alone_blocks():
    """The ```python blocks of docs/SNIPPETS.md that say they need torch alone (their first line)."""
    blocks = re.findall(r"^```python\n(.*?)^```", open(SNIPPETS).read(), flags=re.S | re.M)
    return [b for b in blocks if b.startswith("# torch alone")]


# What the one process does with the pasted files: argv[1] is {piece: path of its file}, argv[2] SNIPPETS' blocks.
DRIVER = r'''
import json, runpy, sys
import torch, torch.nn as nn, torch.nn.functional as F, torchvision
files, snippets = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
out = {}

def resnet_with(make):   # a ResNet-18 whose every nn.ReLU is replaced, as a user would (a block calls its ReLU twice)
    m = torchvision.models.resnet18(num_classes=10)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, make())
    return m

x = torch.linspace(-4, 4, 81, dtype=torch.float64)
refs = {"ParametricSoftplus": lambda x: torch.log1p(torch.exp(10 * x)) / 10,      # alpha 10 by default
        "SmoothReLU": lambda x: torch.where(x >= 0, x - torch.log1p(400 * x.clamp_min(0)) / 400, 0 * x),   # alpha 400
        "ELU": lambda x: torch.where(x >= 0, x, torch.exp(x.clamp_max(0)) - 1),
        "SmoothGradReLU": lambda x: x.clamp_min(0)}
for piece, ref in refs.items():
    cls = runpy.run_path(files[piece])[piece]
    act = cls(smooth=True) if piece == "SmoothGradReLU" else cls()
    xx = x.clone().requires_grad_(True)
    y = act.double()(xx)
    (g,) = torch.autograd.grad(y.sum(), xx)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(xr).sum(), xr)
    if piece == "SmoothGradReLU":
        g_ref = torch.sigmoid(10 * x)   # the smooth backward, not ReLU's derivative
    calls = []
    model = resnet_with(lambda: (cls(smooth=True) if piece == "SmoothGradReLU" else cls()))
    for m in model.modules():
        if isinstance(m, cls):
            m.register_forward_hook(lambda *a: calls.append(1))
    logits = model(torch.rand(2, 3, 32, 32))
    logits.sum().backward()
    grad = model.conv1.weight.grad
    out[piece] = {"value_err": (y.detach() - ref(x)).abs().max().item(), "grad_err": (g - g_ref).abs().max().item(),
                  "calls": len(calls), "shape": list(logits.shape),
                  "grad_ok": bool(torch.isfinite(grad).all() and grad.abs().sum() > 0)}

pgd = runpy.run_path(files["pgd"])["pgd"]
model = torchvision.models.resnet18(num_classes=10).train()
xb, yb, eps = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), 8 / 255
x_adv = pgd(model, xb, yb, eps, 2 / 255, 3)
out["pgd"] = {"dist": (x_adv - xb).abs().max().item(), "lo": x_adv.min().item(), "hi": x_adv.max().item(),
              "moved": not torch.equal(x_adv, xb), "train_mode_kept": model.training, "eps": eps}

step = runpy.run_path(files["adversarial_training_step"])["adversarial_training_step"]
model = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
before = [p.detach().clone() for p in model.parameters()]
loss, logits = step(model, xb, yb, opt, eps, eps, 1)
out["adversarial_training_step"] = {"loss": loss.item(), "shape": list(logits.shape),
                                    "changed": sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())),
                                    "params": len(before)}
runpy.run_path(snippets)   # docs/SNIPPETS.md's torch-alone blocks, in order
out["snippets"] = "ran"
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def sizes():
    return pasted()


def test_each_piece_is_small_enough_as_pasted(sizes):
    print("\npasted pieces (under the torch imports):\n" + report(sizes))
    for piece, (_, n, _) in sizes.items():
        assert n <= PIECES[piece][3], f"{piece}: {n} lines pasted, more than {PIECES[piece][3]}\n{report(sizes)}"


def test_snippets_show_exactly_the_pieces(sizes):
    """docs/SNIPPETS.md's torch-alone blocks hold each piece's source as it stands in its stage file."""
    text = "\n".join(torch_alone_blocks())
    for piece in PIECES:
        for source in paste(piece, given=set(PIECES[piece][2]))[1]:
            assert source in text, f"docs/SNIPPETS.md does not show {piece} as it stands in {PIECES[piece][0]}"
    for block in torch_alone_blocks():
        assert "sys.path" not in block and "importlib" not in block and "/path/to/" not in block, \
            "a block that says 'torch alone' must not import the repo"


def test_pasted_pieces_run_with_torch_alone(sizes, tmp_path):
    assert not str(tmp_path).startswith(ROOT), "the pasted files must lie outside the clone"
    files = {}
    for piece, (code, _, _) in sizes.items():
        files[piece] = str(tmp_path / f"{piece}.py")
        (tmp_path / f"{piece}.py").write_text(code)
    (tmp_path / "snippets.py").write_text("\n".join(torch_alone_blocks()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-I", "-c", DRIVER, json.dumps(files), str(tmp_path / "snippets.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    for piece in ("ParametricSoftplus", "SmoothReLU", "ELU", "SmoothGradReLU"):
        o = out[piece]
        assert o["value_err"] < 1e-12 and o["grad_err"] < 1e-12, (piece, o)   # the formula and its derivative
        assert o["calls"] >= 17 and o["shape"] == [2, 10] and o["grad_ok"], (piece, o)   # used in every block, learns
    p = out["pgd"]
    assert p["dist"] <= p["eps"] + 1e-6 and p["lo"] >= 0 and p["hi"] <= 1 and p["moved"] and p["train_mode_kept"], p
    s = out["adversarial_training_step"]
    assert s["shape"] == [4, 10] and s["loss"] == s["loss"] and s["changed"] == s["params"], s   # every weight moved
    assert out["snippets"] == "ran"
    assert not (tmp_path / "runs").exists()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print("pasted pieces (under the torch imports):\n" + report(pasted()))
