"""Alembic migrations, shipped inside the package so `orchestrator migrate` finds them anywhere.

`bot.db.migrate` builds the Alembic configuration in code (no alembic.ini at run time) and passes
an open connection to `env.py` through `config.attributes["connection"]`.
"""
