"""A fresh PostgreSQL database per test on the session's server, dropped after, so tests never see each other's rows.

Each database sorts text by ICU's en-US collation, as a fleet's database often does, where
"bb-a" < "bb-B" < "bb_a" unlike in byte order: the logs' order must not depend on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from servers import PostgresServer


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """Create an empty database on ``server``; yield its postgresql:// URL; drop it (and its connections) after."""
    name = f"bb_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        create = "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        conn.execute(sql.SQL(create).format(sql.Identifier(name)))
    try:
        yield f"{server.url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
