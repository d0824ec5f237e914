"""Exceptions raised by credits-db, mapped from SQLSTATEs (never from message text).

Every documented SQLSTATE the SQL functions raise has exactly one class here.
The class docstring is the default message. The original psycopg error is
chained (``raise ... from exc``) and its SQLSTATE, message, detail and hint are
kept on the exception; ``str()`` of an exception is its message followed by the
database's DETAIL and HINT, so a log line or the CLI's one line keeps them.
"""

from __future__ import annotations

import re
from typing import ClassVar

import psycopg
import sqlalchemy.exc


class CreditsError(Exception):
    """A credits-db operation failed."""

    sqlstate: ClassVar[str | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.message = message or (self.__doc__ or "").strip()
        if sqlstate is not None:
            self.sqlstate_received = sqlstate
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        extra = "; ".join(f"{label}: {text}" for label, text in
                          (("DETAIL", self.detail), ("HINT", self.hint)) if text)
        return f"{self.message.rstrip('.')} ({extra})" if extra else self.message


class InsufficientCredits(CreditsError):
    """Neither the account nor its team pool has enough credits for this debit."""

    sqlstate = "CR001"


class TeamFull(CreditsError):
    """The team admin's pool already has as many members as the role allows."""

    sqlstate = "CR002"


class NotTeamAdmin(CreditsError):
    """The user's role does not allow a team credit pool."""

    sqlstate = "CR003"


class AlreadyInTeam(CreditsError):
    """The user is already a member of another team's pool."""

    sqlstate = "CR004"


class UnknownUser(CreditsError):
    """No such user."""

    sqlstate = "CR005"


class InvalidAmount(CreditsError):
    """The amount must be a positive integer that fits the balance (at most 2^31-1)."""

    sqlstate = "CR006"


class IdempotencyConflict(CreditsError):
    """The idempotency key was already used on this account with different parameters."""

    sqlstate = "CR007"


class AlreadyRefunded(CreditsError):
    """The log entry is not a refundable debit, or it was refunded already."""

    sqlstate = "CR008"


class SelfTeamMembership(CreditsError):
    """A user cannot join their own team."""

    sqlstate = "CR009"


class AppendOnlyViolation(CreditsError):
    """credit_usage_log is append-only: rows are never updated or deleted."""

    sqlstate = "CR010"


class ReadCommittedRequired(CreditsError):
    """A role may start renewing only in a READ COMMITTED transaction.

    Raised by an ``UPDATE`` of ``role_credits.renewal_interval`` from NULL to an
    interval, or an ``INSERT`` of a role with one, at REPEATABLE READ or
    SERIALIZABLE: the accounts opened beside it could not be scheduled. Nothing
    changed; run the change at READ COMMITTED.
    """

    sqlstate = "CR014"


class InvalidArgument(CreditsError):
    """An argument is NULL or out of range.

    ``field`` names the argument when it is known (``"source"``,
    ``"idempotency_key"``): the Python parameter, which the SQL function's
    message spells with a ``p_`` prefix (``p_source must be a non-empty text``).
    """

    sqlstate = "22023"

    def __init__(
        self,
        message: str | None = None,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail, hint=hint)
        self.field = field


class PermissionDenied(CreditsError):
    """The current database role may not do this."""

    sqlstate = "42501"


class NotInstalled(CreditsError):
    """credits-db is not installed in this database: run credits-db upgrade."""

    # A credits-db call names only credits-db's own functions and tables, with the
    # argument types they were created with: when PostgreSQL finds no such function
    # (42883) or table (42P01), the migrations have not run here (or not up to the
    # revision that added it). DETAIL keeps the server's own words.
    sqlstate = "42883"


class RetryableError(CreditsError):
    """A serialization failure, deadlock, lock or statement timeout: nothing was written.

    Retry the whole call; with an idempotency key a retry can never apply twice.
    """


class ConnectionLost(CreditsError):
    """The connection to the database broke during the call.

    ``outcome_unknown`` is True when the failure may have happened after the
    server committed: retry with the same idempotency key to find out safely.
    It is False when the call ran inside a transaction that had not committed
    (the server rolls an open transaction back when its connection ends) or
    when the connection was already closed before the call was sent.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        outcome_unknown: bool = True,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.outcome_unknown = outcome_unknown


_BY_SQLSTATE: dict[str, type[CreditsError]] = {
    cls.sqlstate: cls
    for cls in (
        InsufficientCredits,
        TeamFull,
        NotTeamAdmin,
        AlreadyInTeam,
        UnknownUser,
        InvalidAmount,
        IdempotencyConflict,
        AlreadyRefunded,
        SelfTeamMembership,
        AppendOnlyViolation,
        ReadCommittedRequired,
        InvalidArgument,
        PermissionDenied,
        NotInstalled,
    )
    if cls.sqlstate is not None
}
_BY_SQLSTATE["42P01"] = NotInstalled  # undefined_table
_BY_SQLSTATE["22004"] = InvalidArgument  # null_value_not_allowed
_BY_SQLSTATE["22P02"] = InvalidArgument  # invalid_text_representation (e.g. a malformed uuid)

_RETRYABLE = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57014",  # query_canceled (statement_timeout)
}

# The server ends the session with these (a FATAL error), so the connection is
# gone; any other SQLSTATE of class 08 (connection_exception) is treated alike.
_CONNECTION_LOST = {
    "57P01",  # admin_shutdown (pg_terminate_backend, a fast shutdown)
    "57P02",  # crash_shutdown (another backend crashed)
    "57P03",  # cannot_connect_now (the server is starting or stopping)
    "57P04",  # database_dropped
    "57P05",  # idle_session_timeout
    "25P03",  # idle_in_transaction_session_timeout
    "08000",  # connection_exception
    "08003",  # connection_does_not_exist
    "08006",  # connection_failure
    "08007",  # transaction_resolution_unknown
    "08P01",  # protocol_violation
}

SQLSTATES: dict[str, type[CreditsError]] = (
    dict(_BY_SQLSTATE)
    | dict.fromkeys(_RETRYABLE, RetryableError)
    | dict.fromkeys(_CONNECTION_LOST, ConnectionLost)
)
"""Every SQLSTATE credits-db translates, and the exception it becomes.

Besides these, any SQLSTATE of class 08, and a psycopg ``OperationalError``
without a SQLSTATE (the socket closed without a word from the server, or the
connection was closed already), become :class:`ConnectionLost`.
"""


def _is_connection_lost(error: psycopg.Error) -> bool:
    if error.sqlstate is None:
        return isinstance(error, psycopg.OperationalError)
    return error.sqlstate in _CONNECTION_LOST or error.sqlstate.startswith("08")


def translate(exc: BaseException, *, may_have_committed: bool = True) -> BaseException:
    """The credits-db exception for a database error, or ``exc`` itself when unmapped.

    ``may_have_committed`` says whether the failed call could have committed
    on its own (an autocommit call, or a COMMIT): it becomes
    ``ConnectionLost.outcome_unknown`` when the connection was lost.
    """
    original = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    if not isinstance(original, psycopg.Error):
        return exc
    first_line = (str(original).strip().splitlines() or [type(original).__name__])[0]
    if _is_connection_lost(original):
        outcome = (
            "the call may have committed: retry with the same idempotency key to find out"
            if may_have_committed
            else "its transaction had not committed and was rolled back"
        )
        return ConnectionLost(
            f"connection lost ({first_line}); {outcome}",
            outcome_unknown=may_have_committed,
            sqlstate=original.sqlstate,
        )
    if original.sqlstate is None:
        return exc
    cls = SQLSTATES.get(original.sqlstate)
    if cls is None:
        return exc
    diag = original.diag
    message = diag.message_primary or first_line
    if cls is NotInstalled:
        return NotInstalled(sqlstate=original.sqlstate, detail=message)
    if cls is RetryableError:
        message = (f"{message} (retryable: this call changed nothing; "
                   "retry it, with the same idempotency key)")
    if cls is InvalidArgument:
        # The SQL functions name the argument first: "p_source must be ...".
        named = re.match(r"p_([a-z_]+)\b", message)
        return InvalidArgument(message, sqlstate=original.sqlstate, detail=diag.message_detail,
                               hint=diag.message_hint, field=named and named.group(1))
    return cls(
        message,
        sqlstate=original.sqlstate,
        detail=diag.message_detail,
        hint=diag.message_hint,
    )
