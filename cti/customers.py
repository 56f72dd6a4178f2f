"""Identification: who is this contact? Customers, identities, link, merge, undo.

An unknown contact gets a provisional customer at once (never blocking a
pop). Two first contacts from the same unknown number may race: the unique
(kind, value) constraint lets one insert win and the other re-reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.errors import Conflict, InvalidInput, NotFound
from cti.history import HistoryEntry, HistoryWriter, merged_family
from cti.identities import IdentityError, IdentityKind, NormalisedIdentity, normalise
from cti.models import Customer, CustomerMerge, Identity, utcnow

MAX_NAME = 200
CARD_FIELDS = ("name", "segment", "tags", "notes", "external_id", "custom", "provisional")


def card_json(customer: Customer, identities: list[Identity]) -> dict[str, Any]:
    """The customer card as the API and the screen-pop show it."""
    return {
        "id": customer.id,
        "name": customer.name,
        "segment": customer.segment,
        "tags": customer.tags,
        "notes": customer.notes,
        "external_id": customer.external_id,
        "custom": customer.custom,
        "provisional": customer.provisional,
        "identities": [
            {
                "kind": i.kind,
                "value": i.value,
                "raw": i.raw,
                "valid": i.valid,
                "verified": i.verified,
            }
            for i in identities
        ],
    }


@dataclass(frozen=True, slots=True)
class ContactInput:
    kind: str
    value: str


class CustomerService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], history: HistoryWriter, region: str
    ) -> None:
        self._sessions = sessions
        self._history = history
        self.region = region

    def normalise(
        self, kind: IdentityKind | str, raw: str, field: str = "value"
    ) -> NormalisedIdentity:
        try:
            return normalise(kind, raw, self.region)
        except IdentityError as exc:
            raise InvalidInput(str(exc), field=field) from None

    async def _canonical(self, session: AsyncSession, customer_id: int) -> Customer:
        seen: set[int] = set()
        customer = await session.get(Customer, customer_id)
        while customer is not None and customer.merged_into_id is not None:
            if customer.id in seen or len(seen) > 100:
                break
            seen.add(customer.id)
            customer = await session.get(Customer, customer.merged_into_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} does not exist", customer_id=customer_id)
        return customer

    async def get(self, customer_id: int) -> Customer:
        async with self._sessions() as session:
            return await self._canonical(session, customer_id)

    async def lookup(self, kind: IdentityKind | str, raw: str) -> Customer | None:
        ident = self.normalise(kind, raw)
        async with self._sessions() as session:
            customer_id = await session.scalar(
                select(Identity.customer_id).where(
                    Identity.kind == ident.kind.value, Identity.value == ident.value
                )
            )
            if customer_id is None:
                return None
            return await self._canonical(session, customer_id)

    async def identify(
        self, kind: IdentityKind | str, raw: str, *, name: str = ""
    ) -> tuple[Customer, bool]:
        """The customer for this contact, creating a provisional one if unknown."""
        ident = self.normalise(kind, raw)
        for _ in range(3):
            found = await self.lookup(ident.kind, raw)
            if found is not None:
                return found, False
            try:
                async with self._sessions() as session, session.begin():
                    customer = Customer(
                        name=(name or ident.value)[:MAX_NAME], provisional=True, tags=[], custom={}
                    )
                    session.add(customer)
                    await session.flush()
                    session.add(self._identity_row(customer.id, ident))
                return customer, True
            except IntegrityError:
                continue
        raise Conflict("could not identify the contact (concurrent updates)", value=ident.value)

    async def new_anonymous(self, name: str) -> Customer:
        async with self._sessions() as session, session.begin():
            customer = Customer(name=name[:MAX_NAME], provisional=True, tags=[], custom={})
            session.add(customer)
        return customer

    @staticmethod
    def _identity_row(customer_id: int, ident: NormalisedIdentity) -> Identity:
        return Identity(
            customer_id=customer_id,
            kind=ident.kind.value,
            value=ident.value,
            raw=ident.raw[:256],
            valid=ident.valid,
            verified=False,
        )

    async def create(
        self,
        name: str,
        contacts: list[ContactInput],
        *,
        segment: str | None = None,
        notes: str = "",
        external_id: str | None = None,
        tags: list[str] | None = None,
        custom: dict[str, Any] | None = None,
    ) -> Customer:
        idents = [self.normalise(c.kind, c.value, f"{c.kind}s") for c in contacts]
        try:
            return await self._create(
                name, idents, segment=segment, notes=notes, external_id=external_id,
                tags=tags, custom=custom,
            )
        except IntegrityError:
            # A contact of this card was identified (a provisional customer made)
            # between our check and our commit: the same answer as the check's.
            async with self._sessions() as session:
                await self._refuse_taken(session, idents)
            raise

    async def _refuse_taken(self, session: AsyncSession, idents: list[NormalisedIdentity]) -> None:
        for ident in idents:
            owner = await session.scalar(
                select(Identity.customer_id).where(
                    Identity.kind == ident.kind.value, Identity.value == ident.value
                )
            )
            if owner is not None:
                raise Conflict(
                    f"{ident.kind} {ident.value} already belongs to customer {owner}",
                    customer_id=owner,
                    value=ident.value,
                )

    async def _create(
        self,
        name: str,
        idents: list[NormalisedIdentity],
        *,
        segment: str | None,
        notes: str,
        external_id: str | None,
        tags: list[str] | None,
        custom: dict[str, Any] | None,
    ) -> Customer:
        async with self._sessions() as session, session.begin():
            await self._refuse_taken(session, idents)
            customer = Customer(
                name=name[:MAX_NAME],
                segment=segment,
                notes=notes,
                external_id=external_id,
                tags=tags or [],
                custom=custom or {},
                provisional=False,
            )
            session.add(customer)
            await session.flush()
            seen: set[tuple[str, str]] = set()
            for ident in idents:
                if (ident.kind.value, ident.value) not in seen:
                    seen.add((ident.kind.value, ident.value))
                    session.add(self._identity_row(customer.id, ident))
        return customer

    async def identities(self, customer_id: int) -> list[Identity]:
        async with self._sessions() as session:
            family = await merged_family(session, customer_id)
            rows = await session.scalars(
                select(Identity).where(Identity.customer_id.in_(family)).order_by(Identity.id)
            )
            return list(rows)

    async def card(self, customer: Customer) -> dict[str, Any]:
        return card_json(customer, await self.identities(customer.id))

    async def link(self, customer_id: int, kind: str, raw: str, actor_id: int | None) -> Customer:
        """Attach a contact to a customer; a provisional owner of it is merged in."""
        ident = self.normalise(kind, raw)
        async with self._sessions() as session, session.begin():
            target = await self._canonical(session, customer_id)
            row = await session.scalar(
                select(Identity).where(
                    Identity.kind == ident.kind.value, Identity.value == ident.value
                )
            )
            if row is None:
                session.add(self._identity_row(target.id, ident))
                return target
            owner = await self._canonical(session, row.customer_id)
            if owner.id == target.id:
                return target
            if not owner.provisional:
                raise Conflict(
                    f"{ident.value} belongs to customer {owner.id}; merge the customers instead",
                    customer_id=owner.id,
                )
        await self.merge(owner.id, target.id, actor_id)
        return await self.get(target.id)

    async def merge(self, source_id: int, target_id: int, actor_id: int | None) -> CustomerMerge:
        async with self._sessions() as session, session.begin():
            source = await self._canonical(session, source_id)
            target = await self._canonical(session, target_id)
            if source.id == target.id:
                raise Conflict("a customer cannot be merged into itself", customer_id=source.id)
            before = {name: getattr(target, name) for name in CARD_FIELDS}
            if target.provisional and not source.provisional:
                target.name = source.name
            target.provisional = target.provisional and source.provisional
            target.tags = sorted(set(target.tags) | set(source.tags))
            target.custom = {**source.custom, **target.custom}
            target.segment = target.segment or source.segment
            target.external_id = target.external_id or source.external_id
            if source.notes:
                target.notes = (target.notes + "\n" + source.notes).strip()
            source.merged_into_id = target.id
            audit = CustomerMerge(
                source_id=source.id, target_id=target.id, actor_id=actor_id, target_before=before
            )
            session.add(audit)
        await self._history.add(
            HistoryEntry(
                customer_id=target.id,
                kind="customer_merged",
                channel="system",
                payload={"merge_id": audit.id, "source_id": source.id, "actor_id": actor_id},
            )
        )
        return audit

    async def undo_merge(self, merge_id: int, actor_id: int | None) -> CustomerMerge:
        async with self._sessions() as session, session.begin():
            audit = await session.get(CustomerMerge, merge_id)
            if audit is None:
                raise NotFound(f"merge {merge_id} does not exist", merge_id=merge_id)
            if audit.undone_at is not None:
                raise Conflict("this merge was already undone", merge_id=merge_id)
            later = await session.scalar(
                select(CustomerMerge.id).where(
                    CustomerMerge.id > audit.id,
                    CustomerMerge.undone_at.is_(None),
                    CustomerMerge.source_id == audit.target_id,
                )
            )
            if later is not None:
                raise Conflict("undo the later merge of the target first", merge_id=later)
            target = await session.get(Customer, audit.target_id)
            assert target is not None
            for name, value in audit.target_before.items():
                setattr(target, name, value)
            await session.execute(
                update(Customer).where(Customer.id == audit.source_id).values(merged_into_id=None)
            )
            audit.undone_at = utcnow()
        await self._history.add(
            HistoryEntry(
                customer_id=audit.target_id,
                kind="customer_merge_undone",
                channel="system",
                payload={"merge_id": audit.id, "source_id": audit.source_id, "actor_id": actor_id},
            )
        )
        return audit
