//! Driving rustls's unbuffered API over one flight of bytes: records in,
//! decrypted plaintext to the upstream queue, TLS output (handshake
//! messages, encrypted upstream bytes, alerts, close_notify) to the client
//! queue, into buffers of the worker's pool, growing them when rustls asks.

use std::time::Instant;

use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::{Connection, End, Event, Failure, Outbox};
use crate::uring::{Buf, BufPool};

impl Connection {
    pub(super) fn pump_without_input(
        &mut self,
        plaintext: Option<&[u8]>,
        pool: &mut BufPool,
    ) -> Result<(), rustls::Error> {
        // rustls must see the bytes it has not consumed yet, at the same
        // place in its stream: the partial record, or nothing.
        match self.incoming.take() {
            Some(mut gathered) => {
                let result = self.pump(gathered.filled_mut(), plaintext, pool);
                if let Ok((used, _)) = result {
                    gathered.consume(used);
                }
                if gathered.is_empty() {
                    pool.give(gathered);
                } else {
                    self.incoming = Some(gathered);
                }
                result.map(|_| ())
            }
            None => self.pump(&mut [], plaintext, pool).map(|_| ()),
        }
    }

    /// Runs rustls over `input` until it needs more: decrypted records go
    /// to the upstream queue, TLS output to the client queue, and
    /// `plaintext` (from the upstream) is encrypted once rustls may send
    /// application data. Returns the input bytes consumed.
    pub(super) fn pump(
        &mut self,
        input: &mut [u8],
        plaintext: Option<&[u8]>,
        pool: &mut BufPool,
    ) -> Result<(usize, bool), rustls::Error> {
        // A bug in TLS processing must cost this connection, not the worker
        // and every other connection on it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pump_records(input, plaintext, pool)
        }))
        .unwrap_or_else(|_| {
            self.fail(
                Failure::Client,
                "internal error in TLS processing (a bug: please report)".into(),
            );
            Err(rustls::Error::General("internal error".into()))
        })
    }

    fn pump_records(
        &mut self,
        input: &mut [u8],
        mut plaintext: Option<&[u8]>,
        pool: &mut BufPool,
    ) -> Result<(usize, bool), rustls::Error> {
        let mut used = 0;
        let mut encrypted = false;
        loop {
            // rustls calls the session stores synchronously in here, on
            // this thread: what they note belongs to this connection.
            let _ = crate::resume_hint::take();
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut input[used..]);
            if let Some(hint) = crate::resume_hint::take() {
                self.hint = Some(hint);
            }
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    // rustls still refers to the input as it was given.
                    let _ = discard;
                    self.flush_alert(&mut input[used..], pool);
                    return Err(e);
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        discard += record.discard;
                        self.bytes_up += record.payload.len() as u64;
                        Outbox::queue(&mut self.to_upstream.queued, pool).extend(record.payload);
                    }
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        discard += record.discard;
                        self.bytes_up += record.payload.len() as u64;
                        self.early_bytes += record.payload.len() as u64;
                        Outbox::queue(&mut self.to_upstream.queued, pool).extend(record.payload);
                    }
                    // 0-RTT accepted: the upstream should get it now, not
                    // after the handshake, or 0-RTT saves no round trip.
                    if !self.connect_requested {
                        self.connect_requested = true;
                        self.events.push(Event::ConnectUpstream);
                    }
                }
                ConnectionState::EncodeTlsData(mut encoder) => {
                    let out = Outbox::queue(&mut self.to_client.queued, pool);
                    write_growing(out, 1024, "encoding", |buf| {
                        encoder.encode(buf).map_err(|e| match e {
                            EncodeError::InsufficientSize(s) => Ok(s.required_size),
                            e => Err(e.to_string()),
                        })
                    })?;
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The records are in the client queue; the driver sends
                    // them with whatever follows.
                    transmit.done();
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::PeerClosed => self.client_eof = true,
                ConnectionState::Closed => {
                    self.client_eof = true;
                    stop = true;
                }
                ConnectionState::WriteTraffic(mut writer) => {
                    if let Some(data) = plaintext.take() {
                        let out = Outbox::queue(&mut self.to_client.queued, pool);
                        // Each record of at most 16 KiB adds at most 22 bytes (header, type,
                        // tag); ask for that at once rather than learn it from an error.
                        let room = data.len() + (data.len() / 16384 + 1) * 32;
                        write_growing(out, room, "encrypting", |buf| {
                            writer.encrypt(data, buf).map_err(encrypt_needs)
                        })?;
                        encrypted = true;
                    } else if self.upstream_eof && !self.close_notify_queued {
                        let out = Outbox::queue(&mut self.to_client.queued, pool);
                        write_growing(out, 64, "close_notify", |buf| {
                            writer.queue_close_notify(buf).map_err(encrypt_needs)
                        })?;
                        self.close_notify_queued = true;
                    } else {
                        stop = true;
                    }
                }
                _ => stop = true,
            }
            used += discard;
            if stop {
                return Ok((used, encrypted));
            }
        }
    }

    /// After a TLS error: rustls queued an alert; encode it for the client.
    /// Only once: a second call would make rustls deframe the bad input
    /// again and queue a second fatal alert.
    fn flush_alert(&mut self, input: &mut [u8], pool: &mut BufPool) {
        let UnbufferedStatus { state, .. } = self.tls.process_tls_records(input);
        if let Ok(ConnectionState::EncodeTlsData(mut encoder)) = state {
            let out = Outbox::queue(&mut self.to_client.queued, pool);
            let mut room = 64;
            for _ in 0..2 {
                match encoder.encode(out.spare(room)) {
                    Ok(n) => {
                        out.commit(n);
                        return;
                    }
                    Err(EncodeError::InsufficientSize(s)) => room = s.required_size,
                    Err(_) => return,
                }
            }
        }
    }

    pub(super) fn after_pump(&mut self, now: Instant, result: Result<(), rustls::Error>) {
        if let Err(e) = result {
            let failure = if self.handshake_took.is_none() {
                Failure::Handshake
            } else {
                Failure::Client
            };
            if self.end.is_none() {
                // Send the alert first, so the client learns why.
                self.end_after_flush = Some(End::Failed(failure, format!("TLS error: {e}")));
                self.check_flushed();
            }
            return;
        }
        if self.handshake_took.is_none() && !self.tls.is_handshaking() {
            self.handshake_took = Some(now.saturating_duration_since(self.started));
            self.events.push(Event::HandshakeDone);
            if !self.connect_requested {
                self.connect_requested = true;
                self.events.push(Event::ConnectUpstream);
            }
        }
        self.check_finished();
    }
}

/// Lets `write` fill `out`, offering `room` bytes and, when rustls says
/// that is too little (`Err(Ok(needed))`), as many as it needs; any other
/// failure (`Err(Err(why))`) ends the connection, named by `what`.
fn write_growing(
    out: &mut Buf,
    mut room: usize,
    what: &str,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, String>>,
) -> Result<(), rustls::Error> {
    loop {
        match write(out.spare(room)) {
            Ok(n) => {
                out.commit(n);
                return Ok(());
            }
            Err(Ok(needed)) => room = needed,
            Err(Err(why)) => return Err(rustls::Error::General(format!("{what}: {why}"))),
        }
    }
}

/// An encryption error as [`write_growing`] takes it.
fn encrypt_needs(e: EncryptError) -> Result<usize, String> {
    match e {
        EncryptError::InsufficientSize(s) => Ok(s.required_size),
        e => Err(e.to_string()),
    }
}
