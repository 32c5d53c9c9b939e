//! Training metrics as TensorBoard event files, so a run can be watched live in TensorBoard (or
//! synced to W&B, which reads the same files). The format is TFRecord framing (length, masked
//! CRC-32C of the length, data, masked CRC-32C of the data) around `Event` protobuf messages;
//! the messages are encoded with prost from the fields of TensorFlow's `event.proto` and
//! `summary.proto` that scalars need.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

/// `tensorflow.Event`: the fields used here (tags as in event.proto).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` holding a scalar.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC-32C.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Appends scalar events to one event file, flushed after every write so TensorBoard sees them.
pub struct EventWriter {
    file: File,
    pub path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The names TensorBoard reads event files by.
const PREFIX: &str = "events.out.tfevents.";

impl EventWriter {
    /// Creates `dir/events.out.tfevents.TIME.surgery.PID` (with a `.N` suffix when a file of
    /// that name exists: a second run in the same second must not truncate the first one's
    /// events) and writes the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let stem = format!("{PREFIX}{}.surgery.{}", now() as u64, std::process::id());
        let mut n = 0;
        let (file, path) = loop {
            let path = match n {
                0 => dir.join(&stem),
                _ => dir.join(format!("{stem}.{n}")),
            };
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        Ok(writer)
    }

    /// Writes scalars for one step.
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: tag.clone(),
                        simple_value: Some(*v as f32),
                    })
                    .collect(),
            }),
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let record = frame(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The records of an event file, each as (event, its whole frame), up to the first damaged
/// one; the error says why reading stopped there (None when the file ended cleanly).
fn records(bytes: &[u8]) -> (Vec<(Event, &[u8])>, Option<&'static str>) {
    let mut events = vec![];
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return (events, Some("truncated record header"));
        }
        let (len_bytes, after) = rest.split_at(8);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return (events, Some("length checksum mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let after = &after[4..];
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&n| after.len() >= n.saturating_add(4))
        else {
            return (events, Some("truncated record"));
        };
        let (data, after) = after.split_at(len);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return (events, Some("data checksum mismatch"));
        }
        let Ok(event) = Event::decode(data) else {
            return (events, Some("not an Event message"));
        };
        let frame = 16 + len;
        events.push((event, &rest[..frame]));
        rest = &rest[frame..];
    }
    (events, None)
}

/// Reads the events of a file back (checks both CRCs of every record).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match records(&bytes) {
        (events, None) => Ok(events.into_iter().map(|(e, _)| e).collect()),
        (_, Some(why)) => Err(Error::Input {
            path: path.to_path_buf(),
            line: 0,
            msg: why.into(),
        }),
    }
}

/// Removes from every event file in `dir` the scalars logged after `step`, and a record cut
/// short by a kill, as `metrics.jsonl` is trimmed when a run resumes from a checkpoint at
/// `step`: the resumed run logs those steps again (in a new file), and TensorBoard or W&B would
/// otherwise show each of them twice. A file that needs no change is left untouched; the others
/// are rewritten atomically, keeping the records that stay byte for byte.
pub fn forget_steps_after(dir: &Path, step: usize) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX))
        })
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (events, damaged) = records(&bytes);
        let kept: Vec<u8> = events
            .iter()
            .filter(|(e, _)| e.summary.is_none() || e.step <= step as i64)
            .flat_map(|(_, frame)| frame.iter().copied())
            .collect();
        if kept.len() == bytes.len() && damaged.is_none() {
            continue;
        }
        crate::io::atomic::replace_file(&path, |tmp| {
            std::fs::write(tmp, &kept).map_err(|e| Error::io(tmp, e))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn scalars_round_trip_through_an_event_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(3, &[("train/loss".into(), 1.5), ("dev/f1".into(), 0.25)])
            .unwrap();
        let events = read_events(&w.path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let s = events[1].summary.as_ref().unwrap();
        assert_eq!(events[1].step, 3);
        assert_eq!(s.value[0].tag, "train/loss");
        assert_eq!(s.value[1].simple_value, Some(0.25));
    }

    fn steps(path: &Path) -> Vec<i64> {
        read_events(path)
            .unwrap()
            .iter()
            .filter(|e| e.summary.is_some())
            .map(|e| e.step)
            .collect()
    }

    #[test]
    fn writers_in_the_same_second_get_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = EventWriter::create(dir.path()).unwrap();
        a.scalars(1, &[("train/loss".into(), 1.0)]).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path, b.path);
        assert_eq!(steps(&a.path), [1]);
    }

    #[test]
    fn steps_after_a_resume_point_and_a_cut_record_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 1..=5 {
            w.scalars(step, &[("train/loss".into(), step as f64)])
                .unwrap();
        }
        // A kill in the middle of a write leaves part of a record.
        let whole = std::fs::read(&w.path).unwrap();
        let mut cut = whole.clone();
        cut.extend(&frame(b"0123456789")[..9]);
        std::fs::write(&w.path, &cut).unwrap();
        forget_steps_after(dir.path(), 3).unwrap();
        assert_eq!(steps(&w.path), [1, 2, 3]);
        let events = read_events(&w.path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        // Nothing to forget: the file is not rewritten.
        let before = std::fs::read(&w.path).unwrap();
        forget_steps_after(dir.path(), 3).unwrap();
        assert_eq!(std::fs::read(&w.path).unwrap(), before);
        // A folder without event files (or none at all) is fine.
        forget_steps_after(&dir.path().join("none"), 0).unwrap();
    }
}
