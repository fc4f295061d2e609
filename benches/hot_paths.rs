//! Measures the broker's per-message hot paths: backend line parse and
//! decode, frame encode, fan-out enqueue + vectored flush, handshake parse.

use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pystrands::backend::{self, Command};
use pystrands::outq::{Batch, OutQueue};
use pystrands::ws::{encode, frame::FrameReader, handshake};

/// A socket stand-in that accepts everything and counts bytes.
struct Sink(usize);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum();
        self.0 += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn backend_line(c: &mut Criterion) {
    let line = br#"{"action":"message_to_room","request_id":"5b1c0c4e-2f53-4a8e-9d47-1f0e2f9a8c11","params":{"room_id":"lobby","message":"0123456789012345678901234567890123456789012345678901234567890123"}}"#;
    let mut parser = backend::LineParser::new();
    let mut group = c.benchmark_group("backend_line");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse+decode message_to_room (64 B)", |b| {
        b.iter_batched_ref(
            || line.to_vec(),
            |bytes| {
                parser.parse(bytes, |command| {
                    assert!(matches!(
                        command.as_ref().map(|l| &l.command),
                        Ok(&Command::MessageToRoom { .. })
                    ));
                    black_box(&command);
                });
            },
            BatchSize::SmallInput,
        )
    });
    let ctx = backend::Context::new("5b1c0c4e-2f53", "lobby", None, "a1b2c3d4-1", ["lobby"]);
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("encode new_message event (64 B)", |b| {
        b.iter(|| {
            out.clear();
            backend::push_new_message(
                &mut out,
                black_box("hello there, a 64-byte message from a client of this broker!!"),
                ctx.json(),
            );
            black_box(out.len())
        })
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));
    let payload = [b'x'; 64];
    group.bench_function("encode text frame (64 B)", |b| {
        b.iter(|| black_box(encode::message(black_box(&payload), false)))
    });
    // A masked 64-byte client frame, decoded and unmasked in place.
    let mut client_frame = vec![0x81, 0x80 | 64, 1, 2, 3, 4];
    client_frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    let mut reader = FrameReader::new(1 << 20, 1024);
    group.bench_function("read masked text frame (64 B)", |b| {
        b.iter_batched_ref(
            || client_frame.clone(),
            |buf| {
                let used = reader.read(buf, |e| {
                    black_box(e);
                    true
                });
                assert_eq!(used, Ok(buf.len()));
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The fan-out path from encode to the socket: a room's frames of one turn
/// as one shared batch on every member's queue (what the broker does for
/// consecutive room messages), then one vectored flush per member into an
/// in-memory sink; at 1, 5 and 50 frames per member per turn, and per
/// frame as queued one by one (a private message, or a message between
/// messages to other audiences).
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for members in [1_000usize, 10_000] {
        for frames_per_turn in [1usize, 5, 50] {
            group.throughput(Throughput::Elements((members * frames_per_turn) as u64));
            group.bench_function(
                format!("{members} members x {frames_per_turn} frames/turn: batch + flush"),
                |b| {
                    let mut queues: Vec<OutQueue> = (0..members).map(|_| OutQueue::new()).collect();
                    let mut sink = Sink(0);
                    b.iter(|| {
                        let frames: Vec<_> = (0..frames_per_turn)
                            .map(|i| encode::message(&[b'a' + i as u8; 64], false))
                            .collect();
                        let batch = Rc::new(Batch::new(frames));
                        for q in queues.iter_mut() {
                            q.push_batch(&batch);
                        }
                        for q in queues.iter_mut() {
                            q.flush(&mut sink).expect("sink never fails");
                        }
                    });
                    black_box(sink.0);
                },
            );
        }
        let frames_per_turn = 5;
        group.throughput(Throughput::Elements((members * frames_per_turn) as u64));
        group.bench_function(
            format!("{members} members x {frames_per_turn} frames/turn: one by one + flush"),
            |b| {
                let mut queues: Vec<OutQueue> = (0..members).map(|_| OutQueue::new()).collect();
                let mut sink = Sink(0);
                b.iter(|| {
                    for i in 0..frames_per_turn {
                        let frame = encode::message(&[b'a' + i as u8; 64], false);
                        for q in queues.iter_mut() {
                            q.push(Rc::clone(&frame));
                        }
                    }
                    for q in queues.iter_mut() {
                        q.flush(&mut sink).expect("sink never fails");
                    }
                });
                black_box(sink.0);
            },
        );
    }
    group.finish();
}

fn handshake_parse(c: &mut Criterion) {
    let request =
        b"GET /ws/lobby?token=abc HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\nUser-Agent: bench/1.0\r\n\
        Cookie: session=0123456789abcdef\r\n\r\n";
    c.bench_function("handshake parse (9 headers)", |b| {
        b.iter(|| {
            let parsed = handshake::parse(black_box(request), 64).expect("valid request");
            black_box(parsed.expect("complete request"))
        })
    });
}

criterion_group!(benches, backend_line, frames, fan_out, handshake_parse);
criterion_main!(benches);
