"""The docs keep up with the code: every command and setting is documented."""

from __future__ import annotations

import re
from dataclasses import fields

import click

from tests.consumers import REPO
from tshjobs.cli import main
from tshjobs.settings import Settings, env_name

README = (REPO / "README.md").read_text()


def command_paths(group: click.Group, prefix: str = "tshjobs") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, path))
        else:
            paths.append(path)
    return paths


def test_every_command_in_readme():
    missing = [path for path in command_paths(main) if f"`{path}" not in README]

    assert missing == []


def test_every_setting_in_env_example():
    example = (REPO / "packaging" / "tshjobs.env.example").read_text()

    missing = [
        env_name(f.name) for f in fields(Settings) if env_name(f.name) not in example
    ]

    assert missing == []


def test_readme_quick_start_has_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)

    commands = [line for line in block.splitlines() if line.strip()]

    assert len(commands) == 2
    assert commands[0].startswith("./demo.sh")
    assert commands[1].startswith("./test.sh")


def test_linked_docs_exist():
    links = re.findall(r"\]\(((?:docs|packaging)/[^)#]+)\)", README)

    assert links
    assert [link for link in links if not (REPO / link).exists()] == []
