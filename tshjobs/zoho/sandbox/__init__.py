"""A local Zoho Books v3 sandbox: accounts server, Books API and faults.

Run it with `tshjobs zoho-sandbox` or `python -m tshjobs.zoho.sandbox`, or in
a test with `with SandboxServer(SandboxConfig(...)) as sandbox:`. The
differences from real Zoho Books are listed in docs/zoho-sandbox.md.
"""

from tshjobs.zoho.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "SandboxServer"]


def __getattr__(name: str):
    # SandboxServer pulls in Flask; importing it on first use keeps
    # `tshjobs --help`, which loads the sandbox's CLI command, fast.
    if name == "SandboxServer":
        from tshjobs.zoho.sandbox.server import SandboxServer

        return SandboxServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
