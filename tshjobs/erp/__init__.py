"""Access to the ERP database: the reference schema, named queries, sample data."""
