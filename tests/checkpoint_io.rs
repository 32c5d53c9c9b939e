//! Reading and writing checkpoints: round trips, atomic and non-destructive output, sharded files.

use candle_core::Device;
use surgery::arch::{Key, Layout};
use surgery::io::Checkpoint;

use crate::util::{max_abs_diff, save, tempdir, tiny_checkpoint, tiny_config};

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.arch.expected_tensors(), b.arch.expected_tensors());
    for (key, _) in a.arch.expected_tensors() {
        let (x, y) = (
            a.tensor(key, &Device::Cpu).unwrap(),
            b.tensor(key, &Device::Cpu).unwrap(),
        );
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{key}");
    }
}

#[test]
fn save_then_open_round_trips_both_layouts() {
    let dir = tempdir();
    for (i, layout) in [Layout::Bare, Layout::BertPrefixed].into_iter().enumerate() {
        let ckpt = tiny_checkpoint(tiny_config(), layout, 3);
        let path = save(&ckpt, dir.path(), &format!("m{i}"));
        let back = Checkpoint::open(&path).unwrap();
        assert_eq!(back.arch, ckpt.arch);
        assert_same_tensors(&ckpt, &back);
        // Metadata records the tool.
        let store = surgery::io::TensorStore::open_dir(&path).unwrap();
        assert!(store.metadata["surgery_tool"].starts_with("surgery "));
        // No temp folder left beside the output.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn an_existing_output_is_refused_unless_forced() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 4);
    let path = save(&ckpt, dir.path(), "m");
    let err = ckpt.save(&path, false, vec![]).unwrap_err();
    assert!(matches!(err, surgery::Error::OutputExists { .. }), "{err}");
    let other = tiny_checkpoint(tiny_config(), Layout::Bare, 5);
    other.save(&path, true, vec![]).unwrap();
    assert_same_tensors(&other, &Checkpoint::open(&path).unwrap());
}

#[test]
fn saving_over_the_input_folder_is_refused_even_with_force() {
    let dir = tempdir();
    let path = save(
        &tiny_checkpoint(tiny_config(), Layout::Bare, 6),
        dir.path(),
        "m",
    );
    let before = std::fs::read(path.join("model.safetensors")).unwrap();
    let opened = Checkpoint::open(&path).unwrap();
    assert!(opened.save(&path, true, vec![]).is_err());
    assert_eq!(
        std::fs::read(path.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn sharded_checkpoints_are_read_through_the_index() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::BertPrefixed, 7);
    let single = save(&ckpt, dir.path(), "single");
    // Split the tensors over two shard files and write the index.
    let store = surgery::io::TensorStore::open_dir(&single).unwrap();
    let sharded = dir.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::copy(single.join("config.json"), sharded.join("config.json")).unwrap();
    let names: Vec<String> = store.names().map(String::from).collect();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let tensors: Vec<(String, surgery::io::tensor_file::RawTensor)> = chunk
            .iter()
            .map(|n| {
                let t = store.load_f32(n, &Device::Cpu).unwrap();
                weight_map.insert(n.clone(), file.clone().into());
                (
                    n.clone(),
                    surgery::io::tensor_file::RawTensor::from_tensor(&t).unwrap(),
                )
            })
            .collect();
        surgery::io::tensor_file::write_safetensors(
            &sharded.join(&file),
            tensors,
            Default::default(),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let back = Checkpoint::open(&sharded).unwrap();
    assert_same_tensors(&ckpt, &back);
}

#[test]
fn half_precision_tensors_are_widened_to_f32() {
    let dir = tempdir();
    let ckpt = tiny_checkpoint(tiny_config(), Layout::Bare, 8);
    let path = save(&ckpt, dir.path(), "m");
    // Rewrite the file with every tensor in f16.
    let store = surgery::io::TensorStore::open_dir(&path).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for name in store.names() {
        let t = store.load_f32(name, &Device::Cpu).unwrap();
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let start = data.len();
        for v in values {
            data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    drop(store);
    std::fs::write(path.join("model.safetensors"), bytes).unwrap();
    let back = Checkpoint::open(&path).unwrap();
    let key = Key::WordEmbeddings;
    let diff = max_abs_diff(
        &back.tensor(key, &Device::Cpu).unwrap(),
        &ckpt.tensor(key, &Device::Cpu).unwrap(),
    );
    assert!(diff > 0.0 && diff < 2e-3, "{diff}");
}
