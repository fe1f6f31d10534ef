"""`python -m tshjobs.zoho.sandbox`: the same command as `tshjobs zoho-sandbox`."""

from tshjobs.zoho.sandbox.cli import zoho_sandbox

if __name__ == "__main__":
    zoho_sandbox(prog_name="python -m tshjobs.zoho.sandbox")
