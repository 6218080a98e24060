"""Alembic migrations, shipped inside the package so `orchestrator migrate` finds them anywhere.

`bot.db.migrate` builds the Alembic configuration in code (no alembic.ini at run time) and passes
an open connection to `env.py` through `config.attributes["connection"]`.

A new revision: change the models, then `python -m migrations.autogenerate "what changes"`
writes `versions/<NNNN>_<slug>.py` for review; `python -m migrations.autogenerate --check` fails
when the models and the newest revision disagree.
"""
