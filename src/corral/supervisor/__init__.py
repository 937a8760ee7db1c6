"""The supervisor: watches replicas and runs, records incidents, reflects on them and heals."""
