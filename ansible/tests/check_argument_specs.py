#!/usr/bin/env python3
"""Fail when a role's meta/argument_specs.yml and defaults/main.yml disagree.

Every key in defaults must be documented in the spec's `main` entry point and every option there
must have a default, with the same value, and the name of every key must carry the role's name as
its prefix. A role of shared task files (egresswatch_common: no defaults, entry points named after
its task files) must give every option of every entry point a description and the prefix, and
mark it required since nothing defaults it. Usage: check_argument_specs.py ROLE_DIR... (exit 1
and one line per problem).
"""
import os
import sys

import yaml


def problems_of(role_dir):
    role = os.path.basename(os.path.normpath(role_dir))
    with open(os.path.join(role_dir, "meta", "argument_specs.yml"), encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    entry_points = spec.get("argument_specs") or {}
    defaults_path = os.path.join(role_dir, "defaults", "main.yml")
    if "main" not in entry_points and not os.path.exists(defaults_path):
        return shared_task_problems(role, entry_points)
    with open(defaults_path, encoding="utf-8") as f:
        defaults = yaml.safe_load(f) or {}
    options = (entry_points.get("main") or {}).get("options") or {}

    found = []
    for key in sorted(set(defaults) - set(options)):
        found.append(f"{role}: {key} is in defaults/main.yml but not in meta/argument_specs.yml")
    for key in sorted(set(options) - set(defaults)):
        found.append(f"{role}: {key} is in meta/argument_specs.yml but not in defaults/main.yml")
    for key in sorted(set(options) & set(defaults)):
        option = options[key] or {}
        if "default" not in option:
            found.append(f"{role}: {key} has no default in meta/argument_specs.yml")
        elif option["default"] != defaults[key]:
            found.append(
                f"{role}: {key} defaults to {defaults[key]!r} in defaults/main.yml "
                f"but to {option['default']!r} in meta/argument_specs.yml"
            )
        if not option.get("description"):
            found.append(f"{role}: {key} has no description")
    for key in sorted(set(defaults) | set(options)):
        if not key.startswith(role + "_"):
            found.append(f"{role}: {key} is not prefixed with the role's name")
    return found


def shared_task_problems(role, entry_points):
    found = []
    if not entry_points:
        found.append(f"{role}: meta/argument_specs.yml has no entry point")
    for entry, body in sorted(entry_points.items()):
        for key, option in sorted(((body or {}).get("options") or {}).items()):
            option = option or {}
            if not option.get("required"):
                found.append(f"{role}: {entry}: {key} is not required and has no default to fall back on")
            if not option.get("description"):
                found.append(f"{role}: {entry}: {key} has no description")
            if not key.startswith(role + "_"):
                found.append(f"{role}: {entry}: {key} is not prefixed with the role's name")
    return found


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    found = [p for role_dir in argv[1:] for p in problems_of(role_dir)]
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
