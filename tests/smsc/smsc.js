'use strict';
// Test SMSC: node-smpp (npm "smpp" 0.5.1) in server mode, driven over a loopback HTTP API.
//
//   node smsc.js --smpp-port N --http-port M [--record FILE]
//
// Prints one JSON line {"ready":true,...} on stdout once both ports listen.
// HTTP API (JSON bodies, 127.0.0.1 only):
//   GET  /state            submits, reassembled messages, counters
//   POST /config           {bind_status, resp_delay_ms, throttle_tps, silent, auto_dlr}
//   POST /dlr              {message_id, stat, id_format: "hex"|"dec", tlv: bool, date_digits: 10|12}
//   POST /mo               {source, destination, text, coding: "gsm7"|"ucs2", per_part,
//                           order: [1-based seq...], ref, ref16}
//   POST /garbage          {hex}  raw bytes written to every bound session
//   POST /unbind           send unbind to every bound session
//   POST /reset            clear recorded submits and messages
//   POST /die              exit at once (the test may also kill the PID)

const http = require('http');
const smpp = require('smpp');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const smppPort = parseInt(arg('--smpp-port', '2775'), 10);
const httpPort = parseInt(arg('--http-port', '0'), 10);
// Every accepted submit_sm is appended here at once, so the record survives a kill.
const recordPath = arg('--record', '');
const fs = require('fs');

const config = {
  bind_status: 0,
  resp_delay_ms: 0,
  throttle_tps: 0,
  silent: false,
  auto_dlr: false,
};

const state = {
  binds: 0,
  bind_refusals: 0,
  throttled: 0,
  submits: [],
  messages: {},
  enquire_links: 0,
  deliver_resps: [],
  outstanding: 0,
  max_outstanding: 0,
  generic_nacks: [],
  unbind_resps: 0,
};
let nextId = 0x10000;
const recentAccepts = [];
const sessions = new Set();

function concatOf(udhList) {
  for (const ie of udhList || []) {
    if (ie[0] === 0x00 && ie[1] === 3) return {ref: ie[2], total: ie[3], seq: ie[4], bits: 8};
    if (ie[0] === 0x08 && ie[1] === 4) return {ref: ie[2] * 256 + ie[3], total: ie[4], seq: ie[5], bits: 16};
  }
  return null;
}

function textOf(value) {
  if (value === undefined || value === null) return '';
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('latin1');
  return typeof value.message === 'string' ? value.message : String(value.message);
}

function record(pdu, messageId, session) {
  const sm = pdu.short_message;
  const udh = sm && sm.udh ? concatOf(sm.udh) : null;
  const payload = pdu.message_payload;
  const text = payload !== undefined && textOf(payload) !== '' ? textOf(payload) : textOf(sm);
  const entry = {
    message_id: messageId,
    source: pdu.source_addr,
    destination: pdu.destination_addr,
    data_coding: pdu.data_coding,
    esm_class: pdu.esm_class,
    registered_delivery: pdu.registered_delivery,
    udh: udh,
    udh_hex: sm && sm.udh ? Buffer.concat(sm.udh).toString('hex') : '',
    text: text,
    session: session.id,
    at: Date.now(),
  };
  state.submits.push(entry);
  if (recordPath) fs.appendFileSync(recordPath, JSON.stringify(entry) + '\n');
  const total = udh ? udh.total : 1;
  const key = [entry.source, entry.destination, udh ? udh.ref : 'single:' + messageId, total].join('|');
  const msg = state.messages[key] || (state.messages[key] = {parts: {}, total: total, message_ids: {}});
  msg.parts[udh ? udh.seq : 1] = text;
  msg.message_ids[udh ? udh.seq : 1] = messageId;
  const seqs = Object.keys(msg.parts);
  msg.complete = seqs.length === total;
  if (msg.complete) {
    msg.text = seqs.map(Number).sort((a, b) => a - b).map((s) => msg.parts[s]).join('');
  }
}

function stamp(digits) {
  const d = new Date();
  const p = (n) => String(n).padStart(2, '0');
  const s = p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
  return digits === 12 ? s + p(d.getUTCSeconds()) : s;
}

function sendDlr(opts) {
  const sub = state.submits.find((s) => s.message_id === opts.message_id);
  const hexId = opts.message_id;
  const shownId = opts.id_format === 'dec' ? String(parseInt(hexId, 16)) : hexId;
  const stat = opts.stat || 'DELIVRD';
  const date = stamp(opts.date_digits || 10);
  const text = 'id:' + shownId + ' sub:001 dlvrd:' + (stat === 'DELIVRD' ? '001' : '000') +
    ' submit date:' + date + ' done date:' + date + ' stat:' + stat + ' err:000 text:';
  const fields = {
    source_addr: sub ? sub.destination : '0',
    destination_addr: sub ? sub.source : '0',
    esm_class: 0x04,
    data_coding: 0,
    short_message: Buffer.from(text, 'latin1'),
  };
  if (opts.tlv) {
    fields.receipted_message_id = shownId;
    fields.message_state = {DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8}[stat] || 7;
  }
  let sent = 0;
  for (const s of sessions) {
    if (s.bound) {
      s.deliver_sm(fields, (resp) => state.deliver_resps.push(resp.command_status));
      sent++;
    }
  }
  return sent;
}

function ucs2(text) {
  const b = Buffer.from(text, 'utf16le');
  b.swap16();
  return b;
}

function sendMo(opts) {
  // Parts are cut by raw units (UCS-2 code units or GSM septets) as a careless
  // phone would: a GSM escape pair or a surrogate pair may straddle two parts.
  const coding = opts.coding || 'ucs2';
  const gsm = coding === 'gsm7';
  const perPart = opts.per_part || (gsm ? 153 : 67);
  const units = gsm ? smpp.encodings.ASCII.encode(opts.text) : ucs2(opts.text);
  const unitSize = gsm ? 1 : 2;
  const chunks = [];
  for (let i = 0; i < units.length; i += perPart * unitSize) {
    chunks.push(units.slice(i, i + perPart * unitSize));
  }
  const ref = opts.ref === undefined ? 0x2a : opts.ref;
  const order = opts.order || chunks.map((_, i) => i + 1);
  let sent = 0;
  for (const seq of order) {
    const udh = opts.ref16
      ? Buffer.from([6, 8, 4, ref >> 8, ref & 0xff, chunks.length, seq])
      : Buffer.from([5, 0, 3, ref, chunks.length, seq]);
    const pdu = new smpp.PDU('deliver_sm', {
      source_addr: opts.source,
      destination_addr: opts.destination,
      esm_class: chunks.length > 1 ? 0x40 : 0,
      data_coding: gsm ? 0 : 8,
      short_message: chunks.length > 1 ? Buffer.concat([udh, chunks[seq - 1]]) : chunks[0],
    });
    for (const s of sessions) {
      if (s.bound) {
        s.send(pdu, (resp) => state.deliver_resps.push(resp.command_status));
        sent++;
      }
    }
  }
  return sent;
}

const server = smpp.createServer((session) => {
  session.id = Math.random().toString(36).slice(2, 10);
  session.bound = false;
  session.socket.setNoDelay(true);  // answer when due, not when Nagle lets it go
  sessions.add(session);
  session.on('close', () => sessions.delete(session));
  session.on('error', () => sessions.delete(session));
  session.on('bind_transceiver', (pdu) => {
    if (config.silent) return;
    if (config.bind_status) {
      state.bind_refusals++;
      session.send(pdu.response({command_status: config.bind_status}));
      return;
    }
    state.binds++;
    session.bound = true;
    session.send(pdu.response({system_id: 'TESTSMSC'}));
  });
  session.on('enquire_link', (pdu) => {
    if (config.silent) return;
    state.enquire_links++;
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    if (config.silent) return;
    const now = Date.now();
    while (recentAccepts.length && now - recentAccepts[0] >= 1000) recentAccepts.shift();
    if (config.throttle_tps && recentAccepts.length >= config.throttle_tps) {
      state.throttled++;
      session.send(pdu.response({command_status: smpp.ESME_RTHROTTLED}));
      return;
    }
    recentAccepts.push(now);
    const messageId = (nextId++).toString(16).toUpperCase();
    record(pdu, messageId, session);
    state.outstanding++;
    state.max_outstanding = Math.max(state.max_outstanding, state.outstanding);
    const answer = () => {
      state.outstanding--;
      session.send(pdu.response({message_id: messageId}));
      if (config.auto_dlr) sendDlr({message_id: messageId, stat: 'DELIVRD'});
    };
    if (config.resp_delay_ms > 0) setTimeout(answer, config.resp_delay_ms);
    else answer();
  });
  session.on('generic_nack', (pdu) => {
    state.generic_nacks.push({sequence: pdu.sequence_number, status: pdu.command_status});
  });
  session.on('unbind_resp', () => { state.unbind_resps++; });
  session.on('pdu', (pdu) => {
    if (pdu.command === 'unknown' && !config.silent) session.send(pdu.response());
  });
});

function reply(res, code, body) {
  res.writeHead(code, {'content-type': 'application/json'});
  res.end(JSON.stringify(body));
}

const control = http.createServer((req, res) => {
  let data = '';
  req.on('data', (c) => { data += c; });
  req.on('end', () => {
    let body = {};
    try {
      body = data ? JSON.parse(data) : {};
    } catch (e) {
      return reply(res, 400, {error: 'bad json'});
    }
    try {
      if (req.method === 'GET' && req.url === '/state') {
        return reply(res, 200, Object.assign({sessions: sessions.size}, state));
      }
      if (req.method !== 'POST') return reply(res, 405, {error: 'method'});
      switch (req.url) {
        case '/config':
          Object.assign(config, body);
          return reply(res, 200, config);
        case '/dlr':
          return reply(res, 200, {sent: sendDlr(body)});
        case '/mo':
          return reply(res, 200, {sent: sendMo(body)});
        case '/garbage': {
          let n = 0;
          for (const s of sessions) { s.socket.write(Buffer.from(body.hex, 'hex')); n++; }
          return reply(res, 200, {sent: n});
        }
        case '/unbind': {
          let n = 0;
          for (const s of sessions) { if (s.bound) { s.unbind(); n++; } }
          return reply(res, 200, {sent: n});
        }
        case '/reset':
          state.submits = [];
          state.messages = {};
          state.max_outstanding = 0;
          return reply(res, 200, {});
        case '/die':
          reply(res, 200, {});
          return setImmediate(() => process.exit(0));
        default:
          return reply(res, 404, {error: 'unknown'});
      }
    } catch (e) {
      return reply(res, 500, {error: String(e && e.message)});
    }
  });
});

server.listen(smppPort, '127.0.0.1', () => {
  control.listen(httpPort, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({
      ready: true, smpp_port: server.address().port, http_port: control.address().port,
    }) + '\n');
  });
});
