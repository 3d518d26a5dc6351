"""``ropd-tui --headless templates list|show|diff|validate``: judge template versions and checks."""

from __future__ import annotations

import argparse
import sys
import time

from ._output import add_json_flag, echo, print_json, print_table, term_safe

ROLES = ("rubricator", "verifier", "scalar_judge")


def register(subparsers) -> None:
    p = subparsers.add_parser("templates", help="judge template versions: list, show, diff, validate",
                              description="Every template version a run used is kept in the store, by sha256.")
    sub = p.add_subparsers(dest="templates_command", metavar="ACTION")
    sub.required = True

    ls = sub.add_parser("list", help="stored template versions (newest first)")
    ls.add_argument("--role", choices=ROLES)
    ls.add_argument("--run", help="only versions this run used, in order of first use")
    add_json_flag(ls)
    ls.set_defaults(func=handle_list)

    show = sub.add_parser("show", help="print a template version (sha prefix) or file")
    show.add_argument("ref", help="a stored version (sha prefix) or a template file")
    show.add_argument("--role", choices=ROLES)
    show.add_argument("--raw", action="store_true", help="print the text exactly (terminal control characters included)")
    show.set_defaults(func=handle_show)

    diff = sub.add_parser("diff", help="unified diff between two versions (sha prefixes or files)")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--role", choices=ROLES)
    diff.add_argument("--raw", action="store_true", help="print the diff exactly (terminal control characters included)")
    diff.set_defaults(func=handle_diff)

    val = sub.add_parser("validate", help="check a template file (placeholders) without using it")
    val.add_argument("file")
    val.add_argument("--role", choices=ROLES, help="default: from the file name (rubricator/verifier/scalar_judge)")
    add_json_flag(val)
    val.set_defaults(func=handle_validate)


def _store(args):
    from engine.errors import StoreError
    from engine.store import resolve_store_path

    path = resolve_store_path(args.store)
    if not path.exists():
        raise StoreError(f"no run store at {path}", hint="pass --store PATH or set $ROPD_STORE")
    from engine.replay.store import ReplayStore

    return ReplayStore(path)


def guess_role(name: str) -> str | None:
    low = name.lower()
    for role in ROLES:
        if role in low or role.replace("_", "") in low:
            return role
    return None


def load_ref(ref: str, role: str | None, store_args=None):
    """(label, role, text) for a stored version (sha prefix) or a file."""
    from pathlib import Path

    from engine.errors import TemplateError

    p = Path(ref)
    if p.exists():
        try:
            return str(p), role or guess_role(p.name), p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TemplateError(f"{p} cannot be read: {err}") from None
    if store_args is None:
        raise TemplateError(f"{ref!r} is not a file")
    rs = _store(store_args)
    try:
        row = rs.find_template(ref, role)
    finally:
        rs.close()
    return f"{row['role']}@{row['sha'][:12]}", row["role"], row["text"] or ""


def handle_list(args: argparse.Namespace) -> int:
    rs = _store(args)
    try:
        if args.run:
            run = rs.resolve_run(args.run)
            rows = rs.store.templates(run["id"], role=args.role)
            rows = [r | {"runs": run["name"]} for r in rows]
        else:
            rows = rs.template_versions(args.role)
    finally:
        rs.close()
    if args.json:
        print_json([{k: v for k, v in r.items() if k != "text"} | {"lines": (r.get("text") or "").count("\n") + 1}
                    for r in rows])
        return 0
    print_table(["sha", "role", "first seen", "from step", "source", "runs"],
                [(r["sha"][:12], r["role"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["first_seen"])),
                  r.get("first_step", ""), r.get("source") or "", r.get("runs") or "") for r in rows])
    return 0


def handle_show(args: argparse.Namespace) -> int:
    _label, _role, text = load_ref(args.ref, args.role, args)
    text = text if args.raw else term_safe(text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def handle_diff(args: argparse.Namespace) -> int:
    import difflib

    la, _ra, ta = load_ref(args.a, args.role, args)
    lb, _rb, tb = load_ref(args.b, args.role, args)
    lines = list(difflib.unified_diff(ta.splitlines(keepends=True), tb.splitlines(keepends=True), la, lb))
    for line in lines:
        line = line if args.raw else term_safe(line)
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
    return 0 if not lines else 1  # like diff(1): 1 when the versions differ


def handle_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.errors import ConfigError, TemplateError
    from engine.templates.render import Template

    role = args.role or guess_role(Path(args.file).name)
    if role is None:
        raise ConfigError(f"cannot tell the role of {args.file} from its name", hint="pass --role rubricator|verifier|scalar_judge")
    try:
        tpl = Template.load(args.file, role)
    except TemplateError as err:
        if args.json:
            print_json({"file": args.file, "role": role, "valid": False, "error": str(err)})
            return 2
        raise
    if args.json:
        print_json({"file": args.file, "role": role, "valid": True, "sha256": tpl.sha256,
                    "placeholders": sorted(tpl.placeholders)})
    else:
        echo(f"{args.file}: valid {role} template {tpl.short_sha} (placeholders: "
             f"{', '.join(sorted(tpl.placeholders))})")
    return 0
