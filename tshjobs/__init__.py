"""tshjobs: a background-job appliance for the TSH ERP, built on Huey."""

__version__ = "0.1.0"
