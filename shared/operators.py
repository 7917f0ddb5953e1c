"""Operator accounts for the admin dashboard: names and salted password hashes (scrypt)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from shared.models import Operator, utcnow

MIN_PASSWORD_LENGTH = 10
# compared against when the name is unknown, so a wrong name costs as much time as a wrong password
_DUMMY_HASH = generate_password_hash("not a password of anyone", method="scrypt")


class OperatorError(ValueError):
    """The operator cannot be created as asked."""


def create_operator(session: Session, name: str, password: str) -> Operator:
    name = name.strip()
    if not name or len(name) > 100:
        raise OperatorError("the name must be 1 to 100 characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(Operator.id).where(Operator.name == name)) is not None:
        raise OperatorError(f"an operator named {name!r} already exists")
    operator = Operator(name=name, password_hash=generate_password_hash(password, method="scrypt"))
    session.add(operator)
    session.commit()
    return operator


def authenticate(session: Session, name: str, password: str) -> Operator | None:
    """The operator if the password is theirs (recording the sign-in), else None."""
    # no name holds NUL (PostgreSQL text cannot): such a name is unknown, not a query that fails
    operator = None if "\x00" in name else session.scalar(select(Operator).where(Operator.name == name.strip()))
    if operator is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(operator.password_hash, password):
        return None
    operator.last_sign_in_at = utcnow()
    session.commit()
    return operator
