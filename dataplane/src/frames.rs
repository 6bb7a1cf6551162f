//! What the frames of a stream channel carry: batches of records and, in band with
//! them, control events. Rings and the network agents move these frames unchanged.
//!
//! Every payload starts 8-byte aligned (ring frames are), and all integers are
//! little-endian.
//!
//! ```text
//! Data (a batch of records):
//!   0        4        8                      8 + 8·count (if hashes)
//!   +--------+--------+----------------------+------------------------------+
//!   | count  | flags  | key hash × count     | records                      |
//!   +--------+--------+----------------------+------------------------------+
//!   flags bit 0: key hashes present (the batch crossed a key exchange)
//!   flags bit 1: fixed-size records (count × size_of record, back to back, so
//!                8-byte aligned when the record's size is a multiple of 8)
//!   otherwise each record is [u32 length][bytes], back to back.
//!
//! Watermark: [u64 event time ns][u64 kind: 0 watermark, 1 idle, 2 active,
//!            3 latency marker (the time is when its source emitted it)]
//! Barrier:   [u64 checkpoint id][u64 timestamp ns][u64 kind: 0 checkpoint, 1 savepoint]
//! EndOfStream: empty
//! ```
//!
//! Decoding trusts nothing: a count, length or flag that does not add up to the frame is
//! a [`DecodeError`], never a panic or an out-of-bounds read.

use crate::operator::{Barrier, BarrierKind, Event};
use crate::record::{DecodeError, Wire};
use crate::ring::FrameType;

/// Bytes of a batch frame's header (count and flags).
pub const BATCH_HEADER_LEN: usize = 8;
/// Flag: key hashes follow the header.
pub const FLAG_HASHES: u32 = 1;
/// Flag: records have a fixed size and no length prefixes.
pub const FLAG_FIXED: u32 = 2;
/// Most records a batch frame holds (a frame never has more records than bytes).
pub const MAX_BATCH_RECORDS: usize = 256 << 10;
/// Largest control event payload.
pub const MAX_EVENT_LEN: usize = 24;

/// Bytes one record takes in a batch frame (its hash, if any, included).
#[inline(always)]
pub fn record_len<T: Wire>(record: &T, hashes: bool) -> usize {
    let h = if hashes { 8 } else { 0 };
    match T::FIXED_LEN {
        Some(n) => h + n,
        None => h + 4 + record.encoded_len(),
    }
}

/// Bytes of the batch frame [`encode_batch`] writes for the same arguments.
pub fn batch_len<T: Wire>(batch: &[T], sel: Option<&[u32]>, hashes: bool) -> usize {
    let count = sel.map_or(batch.len(), <[u32]>::len);
    match (T::FIXED_LEN, sel) {
        (Some(n), _) => BATCH_HEADER_LEN + count * (n + if hashes { 8 } else { 0 }),
        (None, None) => {
            BATCH_HEADER_LEN + batch.iter().map(|r| record_len(r, hashes)).sum::<usize>()
        }
        (None, Some(s)) => {
            BATCH_HEADER_LEN
                + s.iter()
                    .map(|&i| record_len(&batch[i as usize], hashes))
                    .sum::<usize>()
        }
    }
}

/// Writes a batch frame into `buf` (of [`batch_len`] bytes): the records `batch[i]`
/// for `i` in `sel`, or all of `batch` when `sel` is `None`, with `hashes[i]` beside
/// each when `hashes` is given (indexed like `batch`).
#[inline]
pub fn encode_batch<T: Wire>(
    buf: &mut [u8],
    batch: &[T],
    sel: Option<&[u32]>,
    hashes: Option<&[u64]>,
) {
    let count = sel.map_or(batch.len(), <[u32]>::len);
    let mut flags = 0;
    if hashes.is_some() {
        flags |= FLAG_HASHES;
    }
    if T::FIXED_LEN.is_some() {
        flags |= FLAG_FIXED;
    }
    buf[0..4].copy_from_slice(&(count as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&flags.to_le_bytes());
    let body_at = BATCH_HEADER_LEN + if hashes.is_some() { 8 * count } else { 0 };
    let (head, body) = buf.split_at_mut(body_at);
    if let Some(h) = hashes {
        let out = head[BATCH_HEADER_LEN..].chunks_exact_mut(8);
        match sel {
            Some(s) => out
                .zip(s)
                .for_each(|(o, &i)| o.copy_from_slice(&h[i as usize].to_le_bytes())),
            None => out
                .zip(h)
                .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
        }
    }
    match (T::FIXED_LEN, sel) {
        (Some(0), _) => {}
        (Some(_), None) => T::encode_fixed_slice(batch, body),
        (Some(n), Some(s)) => {
            for (o, &i) in body.chunks_exact_mut(n).zip(s) {
                batch[i as usize].encode(o);
            }
        }
        (None, _) => {
            let mut at = 0;
            let mut put = |r: &T| {
                let n = r.encoded_len();
                body[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                r.encode(&mut body[at + 4..at + 4 + n]);
                at += 4 + n;
            };
            match sel {
                Some(s) => s.iter().for_each(|&i| put(&batch[i as usize])),
                None => batch.iter().for_each(put),
            }
        }
    }
}

fn err<T>(len: usize, reason: &'static str) -> DecodeError {
    DecodeError {
        ty: std::any::type_name::<T>(),
        len,
        reason,
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a batch frame: appends its records to `out` and, when the frame carries
/// key hashes, those to `hashes` (returning whether it did).
///
/// `payload` may lie in memory a peer process writes: fixed-size (plain-old-data)
/// records are copied out of it at once, every bit pattern being a value; other
/// records are decoded from `scratch`, a private copy, so that nothing validated can
/// change before it is used.
pub fn decode_batch<T: Wire>(
    payload: &[u8],
    out: &mut Vec<T>,
    hashes: &mut Vec<u64>,
    scratch: &mut Vec<u8>,
) -> Result<bool, DecodeError> {
    let len = payload.len();
    let (Some(count), Some(flags)) = (u32_at(payload, 0), u32_at(payload, 4)) else {
        return Err(err::<T>(len, "batch frame shorter than its header"));
    };
    let count = count as usize;
    // No writer puts more records in a frame than it has bytes (zero-sized records
    // included), so a larger count is forged: refused before any work is done for it.
    if count > MAX_BATCH_RECORDS {
        return Err(err::<T>(len, "record count beyond any batch frame"));
    }
    let with_hashes = flags & FLAG_HASHES != 0;
    if flags & !(FLAG_HASHES | FLAG_FIXED) != 0 {
        return Err(err::<T>(len, "unknown batch flags"));
    }
    if (flags & FLAG_FIXED != 0) != T::FIXED_LEN.is_some() {
        return Err(err::<T>(len, "batch of another record layout"));
    }
    let hash_bytes = if with_hashes {
        count
            .checked_mul(8)
            .ok_or_else(|| err::<T>(len, "record count too large"))?
    } else {
        0
    };
    let body_at = BATCH_HEADER_LEN
        .checked_add(hash_bytes)
        .filter(|&b| b <= len)
        .ok_or_else(|| err::<T>(len, "key hashes beyond the frame"))?;
    match T::FIXED_LEN {
        Some(n) => {
            let body = &payload[body_at..];
            if count.checked_mul(n) != Some(body.len()) {
                return Err(err::<T>(len, "record count does not match the frame"));
            }
            if n == 0 {
                for _ in 0..count {
                    out.push(T::decode(&[])?);
                }
            } else {
                T::decode_fixed(body, out)?;
            }
        }
        None => {
            scratch.clear();
            scratch.extend_from_slice(&payload[body_at..]);
            let mut at = 0;
            let before = out.len();
            while at < scratch.len() {
                let n = u32_at(scratch, at)
                    .ok_or_else(|| err::<T>(len, "truncated record length"))?
                    as usize;
                let end = (at + 4)
                    .checked_add(n)
                    .filter(|&e| e <= scratch.len())
                    .ok_or_else(|| err::<T>(len, "record length beyond the frame"))?;
                out.push(T::decode(&scratch[at + 4..end])?);
                at = end;
            }
            if out.len() - before != count {
                out.truncate(before);
                return Err(err::<T>(len, "record count does not match the frame"));
            }
        }
    }
    if with_hashes {
        hashes.extend(
            payload[BATCH_HEADER_LEN..body_at]
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)),
        );
    }
    Ok(with_hashes)
}

/// The frame type and payload of a control event; the payload is written into `buf`
/// and its length returned.
pub fn encode_event(event: &Event, buf: &mut [u8; MAX_EVENT_LEN]) -> (FrameType, usize) {
    let mut put = |at: usize, v: u64| buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
    match *event {
        Event::Watermark(t) => {
            put(0, t);
            put(8, 0);
            (FrameType::Watermark, 16)
        }
        Event::Idle(idle) => {
            put(0, 0);
            put(8, if idle { 1 } else { 2 });
            (FrameType::Watermark, 16)
        }
        Event::Barrier(b) => {
            put(0, b.id);
            put(8, b.timestamp_ns);
            put(16, b.kind as u64);
            (FrameType::Barrier, 24)
        }
        Event::EndOfInput => (FrameType::EndOfStream, 0),
    }
}

/// Watermark-frame kind of a latency marker.
const KIND_LATENCY_MARKER: u64 = 3;

/// A latency marker's frame: it carries when its source emitted it (ns, the source
/// host's data-plane clock). Markers go from task to task beside the records, not
/// through operators; each task notes how long after its emission one reached it.
pub fn encode_latency_marker(emitted_ns: u64, buf: &mut [u8; MAX_EVENT_LEN]) -> (FrameType, usize) {
    buf[0..8].copy_from_slice(&emitted_ns.to_le_bytes());
    buf[8..16].copy_from_slice(&KIND_LATENCY_MARKER.to_le_bytes());
    (FrameType::Watermark, 16)
}

/// The emission time of the latency marker a frame carries, if it is one.
#[inline]
pub fn latency_marker(ty: FrameType, payload: &[u8]) -> Option<u64> {
    if ty != FrameType::Watermark || payload.len() != 16 {
        return None;
    }
    (u64_at(payload, 8)? == KIND_LATENCY_MARKER).then(|| u64_at(payload, 0))?
}

/// The control event a frame carries (`None` for data and padding frames, and for
/// latency markers, which [`latency_marker`] reads).
pub fn decode_event(ty: FrameType, payload: &[u8]) -> Result<Option<Event>, DecodeError> {
    let bad = |reason| DecodeError {
        ty: "control event",
        len: payload.len(),
        reason,
    };
    Ok(Some(match ty {
        FrameType::Data | FrameType::Padding => return Ok(None),
        FrameType::Watermark => {
            if payload.len() != 16 {
                return Err(bad("watermark frame of the wrong length"));
            }
            let (Some(t), Some(kind)) = (u64_at(payload, 0), u64_at(payload, 8)) else {
                return Err(bad("watermark frame of the wrong length"));
            };
            match kind {
                0 => Event::Watermark(t),
                1 => Event::Idle(true),
                2 => Event::Idle(false),
                KIND_LATENCY_MARKER => return Ok(None),
                _ => return Err(bad("unknown watermark kind")),
            }
        }
        FrameType::Barrier => {
            let (Some(id), Some(ts), Some(kind)) =
                (u64_at(payload, 0), u64_at(payload, 8), u64_at(payload, 16))
            else {
                return Err(bad("barrier frame of the wrong length"));
            };
            if payload.len() != 24 {
                return Err(bad("barrier frame of the wrong length"));
            }
            let kind = match kind {
                0 => BarrierKind::Checkpoint,
                1 => BarrierKind::Savepoint,
                _ => return Err(bad("unknown barrier kind")),
            };
            Event::Barrier(Barrier {
                id,
                timestamp_ns: ts,
                kind,
            })
        }
        FrameType::EndOfStream => {
            if !payload.is_empty() {
                return Err(bad("end-of-stream frame with a payload"));
            }
            Event::EndOfInput
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::operator::source::Trade;

    fn frame<T: Wire>(records: &[T], hashes: Option<&[u64]>) -> Vec<u8> {
        let mut buf = vec![0u8; batch_len(records, None, hashes.is_some())];
        encode_batch(&mut buf, records, None, hashes);
        buf
    }

    #[test]
    fn a_selection_of_a_batch_is_encoded_in_its_order() {
        let batch = [10u64, 11, 12, 13];
        let sel = [3u32, 1];
        let hashes = [0u64, 101, 102, 103];
        for h in [None, Some(&hashes[..])] {
            let mut buf = vec![0u8; batch_len(&batch, Some(&sel), h.is_some())];
            encode_batch(&mut buf, &batch, Some(&sel), h);
            let (mut out, mut hs) = (Vec::new(), Vec::new());
            decode_batch::<u64>(&buf, &mut out, &mut hs, &mut Vec::new()).unwrap();
            assert_eq!(out, [13, 11]);
            assert_eq!(hs, if h.is_some() { vec![103, 101] } else { vec![] });
        }
        let words = [String::from("a"), String::from("bb"), String::from("ccc")];
        let mut buf = vec![0u8; batch_len(&words, Some(&[2, 0]), false)];
        encode_batch(&mut buf, &words, Some(&[2, 0]), None);
        let mut out: Vec<String> = Vec::new();
        decode_batch(&buf, &mut out, &mut Vec::new(), &mut Vec::new()).unwrap();
        assert_eq!(out, ["ccc", "a"]);
    }

    #[test]
    fn batches_round_trip_with_and_without_hashes() {
        let trades: Vec<Trade> = (0..5)
            .map(|i| Trade {
                ts_ns: i,
                price: 10 * i as i64,
                symbol: i as u32,
                qty: 1,
            })
            .collect();
        let (mut out, mut hs, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        let f = frame(&trades, Some(&[1, 2, 3, 4, 5]));
        assert!(decode_batch::<Trade>(&f, &mut out, &mut hs, &mut scratch).unwrap());
        assert_eq!(out, trades);
        assert_eq!(hs, [1, 2, 3, 4, 5]);
        let words = vec![String::from("a"), String::new(), String::from("héllo")];
        let f = frame(&words, None);
        let mut w: Vec<String> = Vec::new();
        hs.clear();
        assert!(!decode_batch(&f, &mut w, &mut hs, &mut scratch).unwrap());
        assert_eq!(w, words);
        let units = vec![(), (), ()];
        let mut u: Vec<()> = Vec::new();
        decode_batch(&frame(&units, None), &mut u, &mut hs, &mut scratch).unwrap();
        assert_eq!(u.len(), 3);
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        let (mut hs, mut scratch) = (Vec::new(), Vec::new());
        let good = frame(&[1u64, 2, 3], None);
        let mut bad_count = good.clone();
        bad_count[0] = 4;
        let mut zst_flood = frame(&[(), ()], None);
        zst_flood[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch::<()>(&zst_flood, &mut Vec::new(), &mut hs, &mut scratch).is_err());
        let mut huge_count = good.clone();
        huge_count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        huge_count[4] = (FLAG_FIXED | FLAG_HASHES) as u8;
        let mut bad_flags = good.clone();
        bad_flags[4] = 0x80;
        for f in [&good[..5], &bad_count[..], &huge_count[..], &bad_flags[..]] {
            assert!(decode_batch::<u64>(f, &mut Vec::new(), &mut hs, &mut scratch).is_err());
        }
        // Another record layout than the frame's.
        assert!(decode_batch::<String>(&good, &mut Vec::new(), &mut hs, &mut scratch).is_err());
        let s = frame(&[String::from("abc")], None);
        let mut long = s.clone();
        long[8] = 200; // record length beyond the frame
        assert!(decode_batch::<String>(&long, &mut Vec::new(), &mut hs, &mut scratch).is_err());
        let mut invalid = s.clone();
        invalid[12] = 0xff; // not UTF-8
        assert!(decode_batch::<String>(&invalid, &mut Vec::new(), &mut hs, &mut scratch).is_err());
    }

    #[test]
    fn events_round_trip_and_bad_ones_are_refused() {
        let b = Barrier {
            id: 7,
            timestamp_ns: 99,
            kind: BarrierKind::Savepoint,
        };
        for e in [
            Event::Watermark(123),
            Event::Idle(true),
            Event::Idle(false),
            Event::Barrier(b),
            Event::EndOfInput,
        ] {
            let mut buf = [0u8; MAX_EVENT_LEN];
            let (ty, n) = encode_event(&e, &mut buf);
            assert_eq!(decode_event(ty, &buf[..n]).unwrap(), Some(e));
        }
        assert!(decode_event(FrameType::Watermark, &[0; 8]).is_err());
        assert!(decode_event(FrameType::Watermark, &[9; 16]).is_err());
        assert!(decode_event(FrameType::Barrier, &[0; 16]).is_err());
        assert!(decode_event(FrameType::EndOfStream, &[0]).is_err());
        assert_eq!(decode_event(FrameType::Data, &[]).unwrap(), None);
    }

    #[test]
    fn latency_markers_are_watermark_frames_no_event_decoder_mistakes() {
        let mut buf = [0u8; MAX_EVENT_LEN];
        let (ty, n) = encode_latency_marker(12_345, &mut buf);
        assert_eq!(latency_marker(ty, &buf[..n]), Some(12_345));
        // Not a watermark, an idleness change or an error to the event decoder.
        assert_eq!(decode_event(ty, &buf[..n]).unwrap(), None);
        // Watermarks are not markers, nor are frames of other types or lengths.
        let (ty, n) = encode_event(&Event::Watermark(12_345), &mut buf);
        assert_eq!(latency_marker(ty, &buf[..n]), None);
        assert_eq!(latency_marker(FrameType::Barrier, &[3; 16]), None);
        assert_eq!(latency_marker(FrameType::Watermark, &[3; 8]), None);
    }
}
