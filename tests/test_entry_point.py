"""The CLI works from a bare interpreter. pytest, `python -m` and editable installs all import
importlib.util before mechmerge does; the installed console script does not, so a module that
relies on it without importing it fails only for users. Simulate the bare interpreter."""
import os
import subprocess
import sys

BARE = ("import sys, importlib; sys.modules.pop('importlib.util', None); "
        "hasattr(importlib, 'util') and delattr(importlib, 'util'); "
        "from mechmerge.cli import main; main({args!r})")


def run_bare(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", BARE.format(args=list(args))], capture_output=True, text=True,
                          env=env, timeout=120)


def test_commands_resolve_without_preloaded_modules():
    out = run_bare("recipe", "--help")
    assert out.returncode == 0, out.stderr
    assert "--strategy" in out.stdout
    out = run_bare("--help")
    assert out.returncode == 0 and "score" in out.stdout, out.stderr


def test_help_lists_every_command_without_importing_torch():
    """`mechmerge --help` answers at once: no command module (and so no torch) is imported."""
    code = ("import sys\nfrom mechmerge.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    from mechmerge.cli import COMMANDS

    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]
    for name in COMMANDS:
        assert f"  {name} " in out.stdout


def test_every_listed_command_resolves_to_a_click_command():
    import click

    from mechmerge.cli import COMMANDS, cli

    for name, (target, line) in COMMANDS.items():
        cmd = cli.get_command(None, name)
        assert isinstance(cmd, click.Command), target
        assert line.endswith(".") and len(line) <= 80
