"""Local team tooling: PostgreSQL, an MLflow tracking server and a multi-worker API on one machine (``python
-m localteam``)."""
