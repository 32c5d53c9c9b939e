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

impl EventWriter {
    /// Creates `dir/events.out.tfevents.TIME.surgery.PID` and writes the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!(
            "events.out.tfevents.{}.surgery.{}",
            now() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
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

/// Reads the events of a file back (checks both CRCs of every record).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::Input {
        path: path.to_path_buf(),
        line: 0,
        msg: msg.into(),
    };
    let mut events = vec![];
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("truncated record header"));
        }
        let (len_bytes, after) = rest.split_at(8);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return Err(bad("length checksum mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let after = &after[4..];
        if after.len() < len.saturating_add(4) {
            return Err(bad("truncated record"));
        }
        let (data, after) = after.split_at(len);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return Err(bad("data checksum mismatch"));
        }
        events.push(Event::decode(data).map_err(|e| bad(&e.to_string()))?);
        rest = &after[4..];
    }
    Ok(events)
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
}
