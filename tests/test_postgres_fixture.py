"""tests/postgres.py: a real PostgreSQL cluster on 127.0.0.1, reachable with the drivers MLflow (psycopg2) and
Prefect (asyncpg) use, through the URLs they are given, and gone (server and files) after the `with`."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from tests import postgres
from tests.postgres import accepts_connections, postgres_server

pytestmark = [pytest.mark.integration, pytest.mark.server]

DATABASES = ("mlflow", "prefect")


async def _asyncpg_query(dsn: str) -> tuple:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow("select 1, current_database(), current_user")
        listen = await connection.fetchval("SHOW listen_addresses")
        return (*row, listen)
    finally:
        await connection.close()


async def _sqlalchemy_async_query(url: str) -> tuple:
    """The URL as Prefect gets it (PREFECT_API_DATABASE_CONNECTION_URL), through SQLAlchemy's asyncpg dialect."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            row = (await connection.execute(sqlalchemy.text("select 1, current_database()"))).one()
            return engine.dialect.driver, *row
    finally:
        await engine.dispose()


def test_server_serves_two_databases_on_localhost_and_is_gone_after(tmp_path):
    with postgres_server(tmp_path) as server:
        port, data_dir = server.port, server.data_dir
        assert server.host == "127.0.0.1"
        assert server.user == "ragtune"
        assert accepts_connections(port)
        assert (data_dir / "PG_VERSION").is_file()

        urls = {name: server.create_database(name) for name in DATABASES}
        assert urls == {name: f"postgresql+psycopg2://ragtune@127.0.0.1:{port}/{name}" for name in DATABASES}
        assert server.async_url("prefect") == f"postgresql+asyncpg://ragtune@127.0.0.1:{port}/prefect"
        assert server.dsn("prefect") == f"postgresql://ragtune@127.0.0.1:{port}/prefect"

        for name, url in urls.items():
            with contextlib.closing(psycopg2.connect(server.dsn(name))) as connection, connection.cursor() as cursor:
                cursor.execute("select 1, current_database(), current_user")
                assert cursor.fetchone() == (1, name, "ragtune")
                cursor.execute("SHOW listen_addresses")
                assert cursor.fetchone() == ("127.0.0.1",)
                cursor.execute("select host(inet_server_addr())")
                assert cursor.fetchone() == ("127.0.0.1",)

            engine = sqlalchemy.create_engine(url)  # the URL as MLflow gets it (--backend-store-uri): psycopg2
            try:
                with engine.connect() as connection:
                    row = connection.execute(sqlalchemy.text("select 1, current_database()")).one()
                assert (engine.dialect.driver, *row) == ("psycopg2", 1, name)
            finally:
                engine.dispose()

            assert asyncio.run(_asyncpg_query(server.dsn(name))) == (1, name, "ragtune", "127.0.0.1")
            assert asyncio.run(_sqlalchemy_async_query(server.async_url(name))) == ("asyncpg", 1, name)

        with pytest.raises(psycopg2.OperationalError, match="does not exist"):
            psycopg2.connect(server.dsn("never_created")).close()

    assert not accepts_connections(port)
    assert not data_dir.exists()
    assert not data_dir.parent.exists()  # the whole cluster directory (socket, log) is removed too
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()


def test_server_is_stopped_and_removed_when_the_body_raises(tmp_path):
    with pytest.raises(ZeroDivisionError), postgres_server(tmp_path) as server:
        port, data_dir = server.port, server.data_dir
        assert accepts_connections(port)
        1 / 0  # noqa: B018
    assert not accepts_connections(port)
    assert not data_dir.parent.exists()


def test_missing_postgres_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "initdb_path", lambda: None)
    with pytest.raises(RuntimeError) as raised, postgres_server(tmp_path):
        pytest.fail("started a server without initdb")
    assert str(raised.value) == ("PostgreSQL is not installed: run scripts/ensure_postgres.sh (make setup does) "
                                 "or apt-get install postgresql")
    assert list(tmp_path.iterdir()) == []
