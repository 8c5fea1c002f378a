"""Code-review tasks: a unified diff that plants one known defect.

Each template is a before/after pair; the after side marks the defective
line(s) with `#!`, which is stripped before diffing. A random module preamble
shifts the hunk so the defect's line number differs from row to row and has
to be read off the hunk header.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass

from qeforge.demo.test_generation import Example

MARK = "  #!"


@dataclass(frozen=True)
class ReviewTemplate:
    issue_type: str
    before: str
    after: str
    comment: str  # what a good reviewer says; {name} is the entity noun


TEMPLATES: tuple[ReviewTemplate, ...] = (
    ReviewTemplate("mutable-default-argument", '''
def add_{name}(item, bucket=None):
    if bucket is None:
        bucket = []
    bucket.append(item)
    return bucket
''', '''
def add_{name}(item, bucket=[]):  #!
    bucket.append(item)
    return bucket
''', "mutable default argument `bucket=[]`: the list is created once and shared by every call, so items leak between callers. Default to `None` and create the list inside."),
    ReviewTemplate("bare-except", '''
def load_{name}(path):
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None
''', '''
def load_{name}(path):
    try:
        with open(path) as fh:
            return fh.read()
    except:  #!
        return None
''', "bare `except:` swallows every exception, including KeyboardInterrupt, SystemExit and genuine bugs such as a TypeError. Catch `FileNotFoundError` (or `OSError`) explicitly."),
    ReviewTemplate("off-by-one", '''
def last_{name}s(items, n):
    return items[len(items) - n:]
''', '''
def last_{name}s(items, n):
    result = []
    for i in range(len(items) - n + 1, len(items)):  #!
        result.append(items[i])
    return result
''', "off-by-one: the range starts at `len(items) - n + 1`, so only n - 1 items are returned. Start at `len(items) - n` (or keep the slice)."),
    ReviewTemplate("sql-injection", '''
def find_{name}(conn, name):
    cur = conn.execute("SELECT * FROM {name}s WHERE name = ?", (name,))
    return cur.fetchall()
''', '''
def find_{name}(conn, name):
    query = f"SELECT * FROM {name}s WHERE name = '{{name}}'"  #!
    cur = conn.execute(query)
    return cur.fetchall()
''', "SQL built with string formatting from caller input: a name containing a quote breaks the query and allows SQL injection. Keep the parameterised query (`?` placeholder with a params tuple)."),
    ReviewTemplate("unclosed-file", '''
def count_{name}_lines(path):
    with open(path) as fh:
        return sum(1 for _ in fh)
''', '''
def count_{name}_lines(path):
    fh = open(path)  #!
    return sum(1 for _ in fh)
''', "the file is opened without a context manager and never closed; the handle leaks until garbage collection (and on PyPy or in long-running workers, indefinitely). Use `with open(path) as fh:`."),
    ReviewTemplate("none-comparison", '''
def {name}_label(record):
    if record.get("label") is None:
        return "unlabelled"
    return record["label"]
''', '''
def {name}_label(record):
    if record.get("label") == None:  #!
        return "unlabelled"
    return record["label"]
''', "comparison to None with `==`: objects can override `__eq__`, and PEP 8 requires an identity check. Use `is None`."),
    ReviewTemplate("shadowed-builtin", '''
def summarize_{name}s(values):
    total = sum(values)
    return total / len(values)
''', '''
def summarize_{name}s(values):
    sum = 0  #!
    for v in values:
        sum += v
    return sum / len(values)
''', "local variable `sum` shadows the builtin; any later call to `sum()` in this function fails with `TypeError: 'int' object is not callable`. Rename it (e.g. `total`)."),
    ReviewTemplate("hardcoded-secret", '''
def {name}_client(session):
    token = os.environ["API_TOKEN"]
    return session.with_headers({{"Authorization": f"Bearer {{token}}"}})
''', '''
def {name}_client(session):
    token = "sk-live-4f9a2c7e1b8d"  #!
    return session.with_headers({{"Authorization": f"Bearer {{token}}"}})
''', "a live API token is hard-coded in source; it ends up in version control and every build artefact. Read it from the environment or a secret store and rotate the leaked key."),
    ReviewTemplate("assert-for-validation", '''
def set_{name}_quantity(order, qty):
    if qty <= 0:
        raise ValueError("quantity must be positive")
    order["qty"] = qty
''', '''
def set_{name}_quantity(order, qty):
    assert qty > 0, "quantity must be positive"  #!
    order["qty"] = qty
''', "input validation done with `assert`: assertions are stripped under `python -O`, so invalid quantities would be accepted silently. Raise `ValueError` instead."),
    ReviewTemplate("mutation-during-iteration", '''
def drop_inactive_{name}s(items):
    return [item for item in items if item["active"]]
''', '''
def drop_inactive_{name}s(items):
    for item in items:
        if not item["active"]:
            items.remove(item)  #!
    return items
''', "removing from a list while iterating over it skips the element after each removal, so consecutive inactive items survive. Build a new list (comprehension) or iterate over a copy."),
    ReviewTemplate("float-equality", '''
def {name}_total_matches(lines, expected):
    return math.isclose(sum(lines), expected, rel_tol=1e-9)
''', '''
def {name}_total_matches(lines, expected):
    return sum(lines) == expected  #!
''', "exact `==` on floating-point sums: 0.1 + 0.2 != 0.3, so totals that are equal to the cent compare unequal. Use `math.isclose` or Decimal for money."),
)

PREAMBLES = (
    ['"""{title} helpers."""', "", "import math", "import os", ""],
    ["# {title} service utilities", "from __future__ import annotations", "", "import logging", "import math", "import os", "", "log = logging.getLogger(__name__)", ""],
    ['"""Domain logic for {name}s.', "", "Shared by the API and the batch jobs.", '"""', "import math", "import os", "", "MAX_BATCH = 500", "", "", "def _normalise(value):", "    return value.strip().lower()", ""],
    ["import math", "import os", ""],
)

NAMES = ("order", "invoice", "customer", "ticket", "shipment", "account", "report", "sensor")
PATHS = ("src/{name}s/service.py", "app/{name}_repo.py", "lib/{name}s.py", "services/{name}/core.py")

PROMPTS = (
    "Review this diff and point out any problems:\n\n```diff\n{diff}```",
    "Code review request for {path}. Comment on bugs, security and maintainability issues, with line numbers.\n\n```diff\n{diff}```",
    "Please review the following change before it is merged.\n\n```diff\n{diff}```",
)


def make_example(spec_seed: int, style_seed: int) -> Example:
    spec, style = random.Random(spec_seed), random.Random(style_seed)
    template = spec.choice(TEMPLATES)
    name = style.choice(NAMES)
    preamble = [line.format(name=name, title=name.title()) for line in spec.choice(PREAMBLES)]
    path = style.choice(PATHS).format(name=name)

    def lines(body: str) -> list[str]:
        return preamble + [""] + body.strip("\n").format(name=name).splitlines()

    before = lines(template.before)
    after_marked = lines(template.after)
    issue_lines = [i for i, line in enumerate(after_marked, start=1) if line.endswith(MARK)]
    after = [line[: -len(MARK)] if line.endswith(MARK) else line for line in after_marked]
    diff = "\n".join(difflib.unified_diff(before, after, f"a/{path}", f"b/{path}", lineterm="")) + "\n"

    task = style.choice(PROMPTS).format(diff=diff, path=path)
    where = ", ".join(map(str, issue_lines))
    comment = template.comment.format(name=name)
    success = f"Line {where}: {comment}"
    if style.random() < 0.4:
        success += "\n\nOtherwise the change looks fine."
    wrong = spec.choice([t for t in TEMPLATES if t.issue_type != template.issue_type])
    failure = spec.choice(
        (
            "LGTM. Small, focused change; no issues found.",
            f"Line {issue_lines[0] + spec.choice((-3, 2, 5))}: {wrong.comment.format(name=name)}",
        )
    )
    partial = f"{comment[0].upper()}{comment[1:]}"  # right problem, no line reference
    return Example(
        task=task,
        # The accepted review comment for the planted issue: the reference code-review eval scores against.
        metadata={"issue_type": template.issue_type, "issue_lines": issue_lines, "path": path, "reference_comment": f"Line {where}: {comment}"},
        outputs={
            "success": success,
            "partial": partial,
            "failure": failure,
            "skipped": "Skipped: diff touches generated code only.",
        },
    )
