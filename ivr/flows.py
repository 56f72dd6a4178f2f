"""The IVR flows: plain async functions over :class:`AgiSession` and :class:`IvrPorts`.

``inbound`` (dialplan ``cti-inbound``, before ``Queue(${CTI_QUEUE})``):
language -> caller identification -> menu (self-service or a queue by skill) ->
position and estimated wait. It sets ``CTI_QUEUE`` (the queue the dialplan joins),
``CTI_CUSTOMER_ID`` and ``CTI_LANGUAGE`` (inherited ``__`` variables).

``queue_exit`` (dialplan ``cti-queue-exit``, the caller pressed 1 or 2 in the
queue): 1 = continue by SMS / web chat (deflection), 2 = callback.

Every step goes into the history through ``ports.history``; a hangup records
the step the caller was in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ivr.ports import (
    CallbackRequest,
    Customer,
    DeflectionRequest,
    IvrChoice,
    IvrPorts,
    OrderState,
    PortError,
    QueueStats,
)
from ivr.session import AgiHangup, AgiSession

log = logging.getLogger(__name__)

RU_VOICE = "ru_RU_f_IvrvoiceRU"  # Debian's asterisk-core-sounds-ru directory name


@dataclass(frozen=True, slots=True)
class MenuOption:
    digit: str
    queue: str | None  # None: self-service (order status), then the menu again
    label: str


def _mapping(**items: str) -> Mapping[str, str]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class IvrConfig:
    """Routing and prompts. Prompt names are Asterisk sound names (no extension);
    the defaults use only asterisk-core-sounds so the lab runs as installed:
    replace them with your own recordings in production."""

    languages: Mapping[str, str] = field(default_factory=lambda: _mapping(**{"1": "en",
                                                                                "2": RU_VOICE}))
    default_language: str = "en"
    language_prompts: tuple[str, ...] = (
        "hello", "vm-press", "digits/1", f"{RU_VOICE}/vm-press", f"{RU_VOICE}/digits/2",
    )
    identify_prompts: tuple[str, ...] = ("vm-num-i-have", "astcc-followed-by-the-pound-key")
    reference_digits: int = 12
    unknown_caller_prompt: str = "vm-incorrect"
    menu: tuple[MenuOption, ...] = (
        MenuOption("1", None, "order_status"),
        MenuOption("2", "sales", "sales"),
        MenuOption("3", "support", "support"),
    )
    menu_prompts: tuple[str, ...] = (
        "vm-press", "digits/1", "vm-press", "digits/2", "vm-press", "digits/3",
    )
    order_intro_prompt: str = "your"
    order_state_prompts: Mapping[str, str] = field(default_factory=lambda: _mapping(
        received="vm-received", processing="pls-hold-while-try", shipped="vm-saved",
        delivered="vm-msgforwarded", cancelled="cancelled",
    ))
    no_order_prompt: str = "vm-nonumber"
    invalid_prompt: str = "pm-invalid-option"
    digit_timeout: float = 5.0
    retries: int = 2
    max_self_service_rounds: int = 3
    # Estimated wait (see docs/ivr.md): bounded, rounded up to whole minutes.
    default_aht: float = 180.0
    min_wait: float = 30.0
    max_wait: float = 3600.0
    # Periodic announcement: the dialplan's Queue() times out every ``announce_every``
    # seconds (CTI_ANNOUNCE_EVERY), runs the ``announce`` flow, re-joins at its position.
    announce_every: int = 120
    offer_prompts: tuple[str, ...] = ("vm-press", "digits/1", "vm-press", "digits/2")
    # queue-exit
    deflect_ok_prompts: tuple[str, ...] = ("auth-thankyou", "goodbye")
    deflect_fail_prompt: str = "sorry"
    callback_confirm_prompts: tuple[str, ...] = ("if-correct-press", "digits/1")
    callback_enter_prompt: str = "vm-enter-num-to-call"
    callback_ok_prompts: tuple[str, ...] = ("auth-thankyou", "goodbye")
    callback_max_digits: int = 15
    callback_min_digits: int = 5


DEFAULT_CONFIG = IvrConfig()


def estimate_wait(
    stats: QueueStats, position: int, config: IvrConfig = DEFAULT_CONFIG
) -> int | None:
    """Estimated wait in seconds: ``position × AHT / agents``, bounded, whole minutes.

    ``agents`` is the number of available agents, or of logged-in agents when none
    is free (they will free up). With nobody logged in there is no estimate (None).
    AHT is the recent average handle time, ``default_aht`` without data.
    """
    if stats.agents_logged_in <= 0:
        return None
    if stats.agents_available > 0 and position <= stats.agents_available:
        return 0
    aht = stats.recent_aht if stats.recent_aht and stats.recent_aht > 0 else config.default_aht
    agents = max(1, stats.agents_available or stats.agents_logged_in)
    raw = position * aht / agents
    bounded = min(config.max_wait, max(config.min_wait, raw))
    return int(math.ceil(bounded / 60.0) * 60)


class CallRecorder:
    """Records each IVR step of one call into the history port."""

    def __init__(self, session: AgiSession, ports: IvrPorts) -> None:
        self.session = session
        self.ports = ports
        self.customer: Customer | None = None

    async def record(self, step: str, value: str) -> None:
        env = self.session.environment
        await self.ports.history.record_choice(
            IvrChoice(
                call_id=env.uniqueid,
                step=step,
                value=value,
                at=time.time(),
                customer_id=self.customer.customer_id if self.customer else None,
                caller_number=env.caller_number,
            )
        )


Flow = Callable[[AgiSession, IvrPorts], Awaitable[None]]
FlowBody = Callable[[AgiSession, IvrPorts, CallRecorder], Awaitable[None]]


def recording_hangups(body: FlowBody) -> Flow:
    """Wrap a flow: a hangup is recorded with the step it happened in, then re-raised."""

    async def flow(session: AgiSession, ports: IvrPorts) -> None:
        recorder = CallRecorder(session, ports)
        try:
            await body(session, ports, recorder)
        except AgiHangup:
            await recorder.record("hangup", session.step)
            raise

    flow.__name__ = body.__name__
    flow.__doc__ = body.__doc__
    return flow


# ---------------------------------------------------------------------- inbound


async def _choose_language(session: AgiSession, rec: CallRecorder, config: IvrConfig) -> str:
    session.step = "language"
    digit = await session.read_digits(
        list(config.language_prompts),
        max_digits=1,
        digit_timeout=config.digit_timeout,
        retries=config.retries,
        valid=config.languages,
        invalid_prompt=config.invalid_prompt,
    )
    language = config.languages[digit] if digit else config.default_language
    await session.set_language(language)
    await session.set_variable("__CTI_LANGUAGE", language)
    await rec.record("language", language if digit else f"default:{language}")
    return language


async def _identify(
    session: AgiSession, ports: IvrPorts, rec: CallRecorder, config: IvrConfig
) -> Customer | None:
    session.step = "identify"
    number = session.environment.caller_number
    if number:
        customer = await ports.customers.find_by_phone(number)
        if customer is not None:
            rec.customer = customer
            await rec.record("identify", "cli")
            return customer
    for _ in range(config.retries + 1):
        digits = await session.read_digits(
            list(config.identify_prompts),
            max_digits=config.reference_digits,
            digit_timeout=config.digit_timeout,
            retries=0,
            invalid_prompt=None,
        )
        if digits is None:
            break
        customer = await ports.customers.find_by_reference(digits)
        if customer is not None:
            rec.customer = customer
            await rec.record("identify", "reference")
            return customer
        await session.stream_file(config.unknown_caller_prompt)
    await rec.record("identify", "unknown")
    return None


async def _order_status(
    session: AgiSession, ports: IvrPorts, rec: CallRecorder, config: IvrConfig
) -> None:
    session.step = "self_service"
    customer = rec.customer
    order = await ports.orders.latest_order(customer.customer_id) if customer else None
    if order is None:
        await session.stream_file(config.no_order_prompt)
        await rec.record("self_service", "order_status:none")
        return
    await session.stream_file(config.order_intro_prompt)
    if order.order_id.isdigit():
        await session.say_digits(order.order_id)
    state_prompt = config.order_state_prompts.get(OrderState(order.state).value)
    if state_prompt:
        await session.stream_file(state_prompt)
    await rec.record("self_service", f"order_status:{order.order_id}:{order.state.value}")


async def _menu(
    session: AgiSession, ports: IvrPorts, rec: CallRecorder, config: IvrConfig
) -> str | None:
    """The queue chosen by skill, or None for the dialplan's default."""
    options = {option.digit: option for option in config.menu}
    for _ in range(config.max_self_service_rounds):
        session.step = "menu"
        digit = await session.read_digits(
            list(config.menu_prompts),
            max_digits=1,
            digit_timeout=config.digit_timeout,
            retries=config.retries,
            valid=options,
            invalid_prompt=config.invalid_prompt,
        )
        if digit is None:
            await rec.record("menu", "default")
            return None
        option = options[digit]
        await rec.record("menu", option.label)
        if option.queue is not None:
            return option.queue
        await _order_status(session, ports, rec, config)
    return None


async def _announce_wait(
    session: AgiSession,
    ports: IvrPorts,
    rec: CallRecorder,
    queue: str,
    config: IvrConfig,
    position: int | None = None,
) -> None:
    session.step = "announce"
    stats = await ports.queues.queue_stats(queue, session.environment.channel)
    if position is None:
        position = stats.waiting + 1  # the caller joins behind everyone waiting now
    wait = estimate_wait(stats, position, config)
    await session.set_variable("__CTI_ESTIMATED_WAIT", "" if wait is None else str(wait))
    if position == 1:
        await session.stream_file("queue-youarenext")
    else:
        await session.stream_file("queue-thereare")
        await session.say_number(position)
        await session.stream_file("queue-callswaiting")
    if wait:
        minutes = wait // 60
        await session.stream_file("queue-holdtime")
        await session.say_number(minutes)
        await session.stream_file("queue-minute" if minutes == 1 else "queue-minutes")
    await rec.record("announce", f"position:{position}:wait:{'unknown' if wait is None else wait}")


def make_inbound(config: IvrConfig = DEFAULT_CONFIG) -> Flow:
    async def inbound(session: AgiSession, ports: IvrPorts, rec: CallRecorder) -> None:
        """Language, identification, self-service / skill menu, position and wait."""
        session.step = "answer"
        await session.answer()
        dialled = await session.get_variable("CTI_DNID")
        await rec.record("start", f"dialled:{dialled or session.environment.extension}")
        await _choose_language(session, rec, config)
        customer = await _identify(session, ports, rec, config)
        if customer is not None:
            await session.set_variable("__CTI_CUSTOMER_ID", customer.customer_id)
        chosen = await _menu(session, ports, rec, config)
        session.step = "queue"
        queue = chosen or await session.get_variable("CTI_QUEUE")
        if not queue:
            log.warning("IVR %s: no queue chosen and CTI_QUEUE unset",
                        session.environment.uniqueid)
            await rec.record("queue", "none")
            return
        await session.set_variable("__CTI_QUEUE", queue)
        await session.set_variable("__CTI_ANNOUNCE_EVERY", str(config.announce_every))
        await rec.record("queue", queue)
        await _announce_wait(session, ports, rec, queue, config)
        session.step = "done"

    return recording_hangups(inbound)


OFFER_KEYS = "12"  # 1: continue by SMS / web chat, 2: callback


async def queue_offers(session: AgiSession, queue: str) -> str:
    """The keys this queue offers: the dialplan global ``CTI_OFFERS_<queue>`` (rendered
    from the PBX description; "" = no offer), every offer when it is not set."""
    if not queue or not all(c.isalnum() or c in "_-" for c in queue):
        return OFFER_KEYS
    value = await session.get_variable(f"CTI_OFFERS_{queue}")
    if value is None:
        return OFFER_KEYS
    return "".join(key for key in OFFER_KEYS if key in value)


def offer_prompts(config: IvrConfig, offers: str) -> list[str]:
    """The configured offer prompts, keeping each offered key's "press N" pair."""
    prompts = list(config.offer_prompts)
    pairs = [prompts[i:i + 2] for i in range(0, len(prompts), 2)]
    if len(pairs) != len(OFFER_KEYS):
        return prompts
    return [name for key, pair in zip(OFFER_KEYS, pairs, strict=True) if key in offers
            for name in pair]


def make_announce(config: IvrConfig = DEFAULT_CONFIG) -> Flow:
    async def announce(session: AgiSession, ports: IvrPorts, rec: CallRecorder) -> None:
        """Periodic: position (Asterisk's QUEUEPOSITION) and wait, then the 1 / 2 offer.

        A digit pressed during the offer goes to ``CTI_EXIT_KEY`` (the dialplan
        then continues in ``cti-queue-exit`` like a key pressed in the queue)."""
        customer_id = await session.get_variable("CTI_CUSTOMER_ID")
        if customer_id:
            rec.customer = Customer(customer_id, "")
        queue = await session.get_variable("CTI_QUEUE") or ""
        position_text = await session.get_variable("QUEUEPOSITION") or ""
        position = int(position_text) if position_text.isdigit() else None
        if queue:
            await _announce_wait(session, ports, rec, queue, config, position)
        session.step = "offer"
        offers = await queue_offers(session, queue)
        if not offers:
            session.step = "done"
            return
        digit = await session.play(offer_prompts(config, offers), offers)
        if digit:
            await session.set_variable("CTI_EXIT_KEY", digit)
            await rec.record("offer", f"pressed:{digit}")
        session.step = "done"

    return recording_hangups(announce)


# ------------------------------------------------------------------- queue exit


async def _exit_context(session: AgiSession) -> tuple[str, float, str | None, str]:
    queue = await session.get_variable("CTI_QUEUE") or ""
    entered_text = await session.get_variable("CTI_QUEUE_ENTERED")
    try:
        entered = float(entered_text) if entered_text else time.time()
    except ValueError:
        entered = time.time()
    customer_id = await session.get_variable("CTI_CUSTOMER_ID") or None
    language = await session.get_variable("CHANNEL(language)") or "en"
    return queue, entered, customer_id, language


def _field(value: str) -> str:
    """A value safe inside a dialplan application argument list."""
    return "".join(ch for ch in value if ch not in ",|\r\n\0")[:128]


async def _finish_exit(
    session: AgiSession, rec: CallRecorder, queue: str, outcome: str, detail: str
) -> None:
    """Tell the dialplan and AMI (reports never count this caller as abandoned)."""
    env = session.environment
    await session.set_variable("CTI_EXIT_OUTCOME", outcome)
    await session.user_event(
        "CtiQueueOutcome",
        {"Queue": _field(queue), "Outcome": outcome, "CallId": _field(env.uniqueid),
         "Detail": _field(detail)},
    )
    await session.exec(
        "QueueLog",
        f"{_field(queue)},{_field(env.uniqueid)},NONE,{outcome.upper()},{_field(detail)}",
    )
    await rec.record("queue_exit", f"{outcome}:{detail}")


async def _deflect(
    session: AgiSession, ports: IvrPorts, rec: CallRecorder, config: IvrConfig
) -> None:
    session.step = "deflect"
    env = session.environment
    queue, entered, customer_id, language = await _exit_context(session)
    choices = tuple(await ports.history.choices_for_call(env.uniqueid))
    try:
        if not env.caller_number:
            raise PortError("no caller number to send the SMS to")
        result = await ports.deflection.deflect_to_text(
            DeflectionRequest(env.uniqueid, env.caller_number, queue, entered, customer_id,
                              language, choices)
        )
    except PortError as exc:
        log.warning("IVR %s: deflection failed: %s", env.uniqueid, exc)
        await rec.record("queue_exit", "deflect_failed")
        await session.set_variable("CTI_EXIT_OUTCOME", "requeue")
        await session.stream_file(config.deflect_fail_prompt)
        return
    await _finish_exit(session, rec, queue, "deflected", result.conversation_id)
    await session.play(list(config.deflect_ok_prompts))
    session.step = "done"
    await session.hangup()


async def _callback(
    session: AgiSession, ports: IvrPorts, rec: CallRecorder, config: IvrConfig
) -> None:
    session.step = "callback_confirm"
    env = session.environment
    queue, entered, customer_id, language = await _exit_context(session)
    number = env.caller_number
    confirmed = False
    if number.isdigit():
        await session.say_digits(number)
        answer = await session.read_digits(
            list(config.callback_confirm_prompts), max_digits=1,
            digit_timeout=config.digit_timeout, retries=0, invalid_prompt=None,
        )
        confirmed = answer == "1"
    if not confirmed:
        session.step = "callback_number"
        keyed = await session.read_digits(
            config.callback_enter_prompt,
            max_digits=config.callback_max_digits,
            min_digits=config.callback_min_digits,
            digit_timeout=config.digit_timeout,
            retries=config.retries,
            invalid_prompt=config.invalid_prompt,
        )
        if keyed is None:
            await rec.record("queue_exit", "callback_no_number")
            await session.set_variable("CTI_EXIT_OUTCOME", "requeue")
            return
        number = keyed
    await rec.record("callback_number", "confirmed" if confirmed else "keyed")
    session.step = "callback_book"
    try:
        booking = await ports.callbacks.book_callback(
            CallbackRequest(env.uniqueid, number, queue, entered, customer_id, language)
        )
    except PortError as exc:
        log.warning("IVR %s: callback booking failed: %s", env.uniqueid, exc)
        await rec.record("queue_exit", "callback_failed")
        await session.set_variable("CTI_EXIT_OUTCOME", "requeue")
        await session.stream_file(config.deflect_fail_prompt)
        return
    await _finish_exit(session, rec, queue, "callback", booking.booking_id)
    await session.play(list(config.callback_ok_prompts))
    session.step = "done"
    await session.hangup()


def make_queue_exit(config: IvrConfig = DEFAULT_CONFIG) -> Flow:
    async def queue_exit(session: AgiSession, ports: IvrPorts, rec: CallRecorder) -> None:
        """The caller pressed 1 (SMS / web chat) or 2 (callback) while queued."""
        env = session.environment
        digit = env.arguments[0] if env.arguments else env.extension
        rec.customer = None
        customer_id = await session.get_variable("CTI_CUSTOMER_ID")
        if customer_id:
            rec.customer = Customer(customer_id, "")
        await rec.record("queue_exit", f"pressed:{digit}")
        queue = await session.get_variable("CTI_QUEUE") or ""
        if digit not in await queue_offers(session, queue):
            await session.set_variable("CTI_EXIT_OUTCOME", "requeue")
        elif digit == "1":
            await _deflect(session, ports, rec, config)
        elif digit == "2":
            await _callback(session, ports, rec, config)
        else:
            await session.set_variable("CTI_EXIT_OUTCOME", "requeue")

    return recording_hangups(queue_exit)


def default_routes(config: IvrConfig = DEFAULT_CONFIG) -> dict[str, Flow]:
    """Flow name (``agi://host:port/<name>``) -> flow."""
    return {
        "inbound": make_inbound(config),
        "announce": make_announce(config),
        "queue-exit": make_queue_exit(config),
    }
