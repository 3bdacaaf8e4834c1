"""ragtune stages: each module holds one stage's logic, usable without Prefect."""
