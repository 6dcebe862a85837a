//! Every WGSL file in `shaders/` compiles and validates with naga (the compiler wgpu uses),
//! so a shader error fails CI with its file, line and column, before any adapter is needed.

use std::path::PathBuf;

fn shader_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders")
}

fn shader_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shader_dir())
        .expect("shaders/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_compiles_and_validates_with_naga() {
    let files = shader_files();
    assert!(
        files.len() >= 7,
        "expected the kernel files in {}, found {files:?}",
        shader_dir().display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let shown = format!("shaders/{}", path.file_name().unwrap().to_string_lossy());
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(module) => module,
            Err(err) => {
                failures.push(err.emit_to_string_with_path(&source, &shown));
                continue;
            }
        };
        // WebGPU's capabilities only: what runs natively must also run in a browser
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        );
        if let Err(err) = validator.validate(&module) {
            failures.push(err.emit_to_string_with_path(&source, &shown));
            continue;
        }
        let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        eprintln!("{shown}: ok, entry points {entries:?}");
    }
    assert!(failures.is_empty(), "shader errors:\n{}", failures.join("\n"));
}

#[test]
fn every_shader_opens_with_its_header_and_is_embedded() {
    let embedded: Vec<&str> = lab_gpu::kernels::SHADERS.iter().map(|(name, _)| *name).collect();
    for path in shader_files() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(source.starts_with("//"), "{name}: must open with a header comment");
        let header: String =
            source.lines().take_while(|l| l.starts_with("//")).collect::<Vec<_>>().join("\n");
        for word in ["Bindings", "Workgroup"] {
            assert!(
                header.to_lowercase().contains(&word.to_lowercase()),
                "{name}: header must give its {word}"
            );
        }
        // every binding the code declares has its own header line, "//   SLOT NAME ..." (a
        // uniform may be named by its kind)
        let described: Vec<(String, String)> = header
            .lines()
            .filter_map(|l| {
                let mut words = l.trim_start_matches('/').split_whitespace();
                let slot = words.next()?;
                let var = words.next()?;
                slot.parse::<u32>().ok().map(|_| (slot.to_string(), var.to_string()))
            })
            .collect();
        let mut declared = Vec::new();
        for line in source.lines().filter(|l| l.contains("@binding(")) {
            let slot = line.split("@binding(").nth(1).unwrap().split(')').next().unwrap();
            // "@group(0) @binding(1) var<storage, read> tokens: array<u32>;" -> "tokens"
            let var = line.split_once('>').unwrap().1.split(':').next().unwrap().trim();
            let uniform = line.contains("var<uniform>");
            let found = described
                .iter()
                .any(|(s, v)| s == slot && (v == var || (uniform && v == "uniform")));
            assert!(
                found,
                "{name}: binding {slot} ({var}) has no header line \"{slot} {var} ...\""
            );
            declared.push(slot.to_string());
        }
        assert!(!declared.is_empty(), "{name}: declares no bindings");
        assert!(
            embedded.contains(&name.as_str()),
            "{name} is not in lab_gpu::kernels::SHADERS, so the engine never runs it"
        );
    }
}
