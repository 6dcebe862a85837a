//! Every WGSL file in `shaders/` compiles and validates with naga (the compiler wgpu uses),
//! so a shader error fails CI with its file, line and column, before any adapter is needed;
//! the host's structs and constants agree with the shaders'.

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
        let file = path.file_name().unwrap().to_string_lossy();
        // as the engine compiles it: with the constants it shares with the host
        let source = lab_gpu::kernels::source(&file, &std::fs::read_to_string(path).unwrap());
        let shown = format!("shaders/{file}");
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

/// A shader file as the engine compiles it, parsed by naga.
fn parse(file: &str) -> naga::Module {
    let text = std::fs::read_to_string(shader_dir().join(file)).unwrap();
    let source = lab_gpu::kernels::source(file, &text);
    naga::front::wgsl::parse_str(&source).unwrap_or_else(|err| panic!("{file}: {err}"))
}

/// A WGSL type as the host spells its twin: "u32", "[f32; 4]" (a vec4), "[[u32; 4]; 2]".
fn rust_spelling(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
    let scalar = |s: naga::Scalar| match (s.kind, s.width) {
        (naga::ScalarKind::Uint, 4) => "u32".to_string(),
        (naga::ScalarKind::Sint, 4) => "i32".to_string(),
        (naga::ScalarKind::Float, 4) => "f32".to_string(),
        other => format!("{other:?}"),
    };
    match &module.types[ty].inner {
        naga::TypeInner::Scalar(s) => scalar(*s),
        naga::TypeInner::Vector { size, scalar: s } => format!("[{}; {}]", scalar(*s), *size as u8),
        naga::TypeInner::Array { base, size: naga::ArraySize::Constant(count), .. } => {
            format!("[{}; {count}]", rust_spelling(module, *base))
        }
        other => format!("{other:?}"),
    }
}

/// Every difference between a host struct's layout and its WGSL twin in `module`, each
/// naming the struct and the field.
fn layout_mismatches(module: &naga::Module, host: &lab_gpu::uniforms::Layout) -> Vec<String> {
    let at = format!("{} `{}` (host {})", host.shader, host.wgsl_name, host.rust_name);
    let Some((members, span)) = module.types.iter().find_map(|(_, ty)| match &ty.inner {
        naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(host.wgsl_name) => {
            Some((members, *span))
        }
        _ => None,
    }) else {
        return vec![format!("{at}: no such struct in the shader")];
    };
    let mut found = Vec::new();
    for i in 0..members.len().max(host.fields.len()) {
        match (members.get(i), host.fields.get(i)) {
            (Some(m), Some(f)) => {
                let name = m.name.as_deref().unwrap_or("?");
                let ty = rust_spelling(module, m.ty);
                if name != f.name {
                    found.push(format!(
                        "{at}: field {i} is `{name}` in WGSL, `{}` on the host",
                        f.name
                    ));
                } else if m.offset as usize != f.offset {
                    found.push(format!(
                        "{at}: field `{name}` is at byte {} in WGSL, {} on the host",
                        m.offset, f.offset
                    ));
                } else if ty != f.ty {
                    found.push(format!(
                        "{at}: field `{name}` is {ty} in WGSL, {} on the host",
                        f.ty
                    ));
                }
            }
            (Some(m), None) => found.push(format!(
                "{at}: field `{}` is missing on the host",
                m.name.as_deref().unwrap_or("?")
            )),
            (None, Some(f)) => found.push(format!("{at}: field `{}` is not in WGSL", f.name)),
            (None, None) => unreachable!(),
        }
    }
    if span as usize != host.size {
        found.push(format!("{at}: {span} bytes in WGSL, {} on the host", host.size));
    }
    found
}

#[test]
fn every_host_struct_matches_its_wgsl_struct_in_naga() {
    let mut failures = Vec::new();
    for host in lab_gpu::uniforms::ALL {
        failures.extend(layout_mismatches(&parse(host.shader), &host));
    }
    assert!(failures.is_empty(), "host structs differ from the shaders:\n{}", failures.join("\n"));
}

#[test]
fn every_uniform_struct_has_a_host_struct() {
    for path in shader_files() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let module = parse(&file);
        for (_, var) in module.global_variables.iter() {
            if var.space != naga::AddressSpace::Uniform {
                continue;
            }
            let name = module.types[var.ty].name.clone().unwrap_or_default();
            assert!(
                lab_gpu::uniforms::ALL.iter().any(|h| h.shader == file && h.wgsl_name == name),
                "{file}: uniform `{name}` has no host struct in lab_gpu::uniforms::ALL"
            );
        }
    }
}

#[test]
fn a_host_struct_that_drifts_from_its_shader_is_named_by_field() {
    use lab_gpu::uniforms::{Field, Gemm, Layout, ShaderStruct};
    let module = parse("matmul.wgsl");
    let real = Gemm::LAYOUT;
    assert!(layout_mismatches(&module, &real).is_empty());
    let with = |fields: Vec<Field>, size: usize| Layout { fields: Vec::leak(fields), size, ..real };
    // two fields swapped by name
    let mut swapped = real.fields.to_vec();
    (swapped[4].name, swapped[5].name) = (swapped[5].name, swapped[4].name);
    let found = layout_mismatches(&module, &with(swapped, real.size));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("field 4 is `a_off` in WGSL, `a_rs` on the host"), "{found:?}");
    // a field moved: `scale` 4 bytes later, the struct 4 bytes longer
    let mut moved = real.fields.to_vec();
    moved[24].offset += 4;
    let found = layout_mismatches(&module, &with(moved, real.size + 4));
    assert_eq!(
        found,
        [
            "matmul.wgsl `Gemm` (host Gemm): field `scale` is at byte 96 in WGSL, 100 on the host",
            "matmul.wgsl `Gemm` (host Gemm): 100 bytes in WGSL, 104 on the host",
        ]
    );
    // a type changed
    let mut retyped = real.fields.to_vec();
    retyped[24].ty = "u32";
    let found = layout_mismatches(&module, &with(retyped, real.size));
    assert_eq!(
        found,
        ["matmul.wgsl `Gemm` (host Gemm): field `scale` is f32 in WGSL, u32 on the host"]
    );
    // a field dropped
    let mut dropped = real.fields.to_vec();
    dropped.remove(23);
    let found = layout_mismatches(&module, &with(dropped, real.size - 4));
    assert!(found[0].contains("field 23 is `aux_off` in WGSL, `scale` on the host"), "{found:?}");
    assert!(found.iter().any(|f| f.contains("field `scale` is missing on the host")), "{found:?}");
}

#[test]
fn shared_constants_are_the_hosts_and_the_shaders_use_them() {
    use lab_gpu::kernels::shared_constants;
    use lab_gpu::uniforms::GemmFlags;
    assert_eq!(shared_constants("matmul.wgsl").len(), GemmFlags::NAMED.len());
    let reduce = shared_constants("reduce.wgsl");
    assert_eq!(reduce, [("BIAS".to_string(), 2), ("ADDEND".to_string(), 4)]);
    let loss = shared_constants("loss.wgsl");
    assert_eq!(loss.len(), 21);
    assert_eq!(loss[3], ("EXO_PAIR".to_string(), 3));
    assert_eq!(loss[20], ("PLACKETT_LUCE".to_string(), 20));
    for path in shader_files() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let module = parse(&file);
        for (name, value) in shared_constants(&file) {
            // the file uses it (outside comments) and leaves its definition to the host
            let code: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap()).collect();
            let code = code.join("\n");
            let uses = code.split(|ch: char| !(ch.is_alphanumeric() || ch == '_'));
            assert!(uses.clone().any(|word| word == name), "{file} never uses {name}");
            assert!(!code.contains(&format!("const {name}")), "{file} declares {name} itself");
            // the module the engine compiles holds it with the host's value
            let (_, constant) = module
                .constants
                .iter()
                .find(|(_, c)| c.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{file}: no constant {name}"));
            assert_eq!(
                module.global_expressions[constant.init],
                naga::Expression::Literal(naga::Literal::U32(value)),
                "{file}: {name}"
            );
        }
    }
}
