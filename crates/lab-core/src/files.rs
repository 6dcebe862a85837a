//! Files in and out, so that nothing a user made is lost and no input can exhaust memory.
//!
//! Reading: [`read_bounded`] reads a regular file (or standard input, named `-`) once, and
//! never more than a limit; a FIFO, a device or a folder is refused before it is opened
//! (opening a FIFO with no writer would block forever, `/dev/zero` would never end).
//!
//! Writing: an [`Outputs`] plan names every file and folder a command will write before
//! any work is done. Each is refused if it exists (unless `force`), if it is (after
//! resolving links) one of the command's inputs, or if its folder is missing. Each is
//! written under a hidden temporary name in the same folder and renamed into place only
//! by [`Outputs::commit`]; a plan dropped without committing removes its temporaries, so a
//! failed write (a full disk, an error, an interrupted run) leaves what was there as it was.

use crate::error::{LabError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The name that stands for standard input.
pub const STDIN: &str = "-";

/// The size limit for small JSON files (`config.json`, `losses --input`, ...).
pub const MAX_JSON_BYTES: u64 = 1_000_000;

/// Whether `path` names standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// How a path is named in messages: as given, or "standard input".
pub fn display_name(path: &Path) -> String {
    if is_stdin(path) {
        "standard input".to_string()
    } else {
        path.display().to_string()
    }
}

/// The message for a file over its limit.
pub fn too_large(name: &str, bytes: u64, limit: u64) -> LabError {
    let mb = |b: u64| b as f64 / 1e6;
    LabError::Parse {
        file: Some(name.to_string()),
        line: None,
        field: None,
        msg: format!(
            "{:.1} MB is over the limit of {} MB for this file; split it or keep only what \
             you need",
            mb(bytes),
            mb(limit)
        ),
    }
}

/// Read the whole of `path` (or standard input for `-`), refusing more than `limit` bytes
/// and anything that is not a regular file.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let name = display_name(path);
    if is_stdin(path) {
        return read_limited(std::io::stdin().lock(), &name, limit);
    }
    check_regular(path)?;
    let file = std::fs::File::open(path).map_err(|e| LabError::io(&name, e))?;
    let size = file.metadata().map_err(|e| LabError::io(&name, e))?.len();
    if size > limit {
        return Err(too_large(&name, size, limit));
    }
    read_limited(file, &name, limit)
}

/// Read `path` as UTF-8 text under `limit`; invalid UTF-8 is named by line and column.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    let bytes = read_bounded(path, limit)?;
    text_from_bytes(bytes, &display_name(path))
}

/// Bytes as UTF-8 text; an invalid sequence is named by its line and column.
pub fn text_from_bytes(bytes: Vec<u8>, name: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        LabError::parse(format!(
            "not UTF-8 text: invalid byte at column {}",
            valid.len() - line_start + 1
        ))
        .at_line(line)
        .in_file(name)
    })
}

/// Refuse what is not a regular file, before opening it (a FIFO would block the open).
pub fn check_regular(path: &Path) -> Result<()> {
    let name = display_name(path);
    let meta = std::fs::metadata(path).map_err(|e| LabError::io(&name, e))?;
    if meta.is_dir() {
        return Err(LabError::io(&name, "is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(LabError::io(
            &name,
            "is not a regular file (a pipe, FIFO or device); pass it on standard input as `-`",
        ));
    }
    Ok(())
}

fn read_limited(reader: impl Read, name: &str, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| LabError::io(name, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(name, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// Writing

/// Whether an output is one file or a folder of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Folder,
}

#[derive(Debug)]
struct Staged {
    target: PathBuf,
    temp: PathBuf,
    kind: Kind,
}

/// Every output of a command, staged under temporary names until [`Outputs::commit`].
#[derive(Debug)]
pub struct Outputs {
    force: bool,
    /// The inputs, resolved, and their (device, inode) where they exist.
    inputs: Vec<(PathBuf, Option<(u64, u64)>)>,
    staged: Vec<Staged>,
}

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Outputs {
    /// A plan that replaces existing outputs only when `force` is set.
    pub fn new(force: bool) -> Self {
        Outputs { force, inputs: Vec::new(), staged: Vec::new() }
    }

    /// Declare an input: no output may be it (or, for a folder output, contain it).
    pub fn input(&mut self, path: &Path) -> &mut Self {
        if !is_stdin(path) {
            let resolved = resolve(path);
            let id = file_id(&resolved);
            self.inputs.push((resolved, id));
        }
        self
    }

    /// Stage a file output; returns the temporary path to write it to.
    pub fn file(&mut self, target: &Path) -> Result<PathBuf> {
        self.check(target, Kind::File)?;
        self.stage(target, Kind::File)
    }

    /// Stage a folder output that will hold the files named `contents`; returns the
    /// temporary folder to write them into. An existing folder is replaced (with `force`)
    /// only if it holds nothing but such files, so a mistyped path never removes a folder
    /// of other things.
    pub fn folder(&mut self, target: &Path, contents: &[&str]) -> Result<PathBuf> {
        self.check(target, Kind::Folder)?;
        if let Ok(entries) = std::fs::read_dir(target) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                if !(is_file && contents.contains(&name.as_str())) {
                    return Err(LabError::io(
                        target.display().to_string(),
                        format!(
                            "holds {name:?}, which this command does not write ({}); name \
                             a new folder",
                            if contents.is_empty() {
                                "it replaces no folder".to_string()
                            } else {
                                format!("it replaces only a folder of {}", contents.join(", "))
                            }
                        ),
                    ));
                }
            }
        }
        self.stage(target, Kind::Folder)
    }

    /// Create the temporary of a checked output.
    fn stage(&mut self, target: &Path, kind: Kind) -> Result<PathBuf> {
        let parent = parent_of(target);
        let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = parent.join(format!(".{base}.alignlab-{}-{n}.tmp", std::process::id()));
            let made = match kind {
                Kind::File => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&candidate)
                    .map(drop),
                Kind::Folder => std::fs::create_dir(&candidate),
            };
            match made {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LabError::io(target.display().to_string(), e)),
            }
        };
        self.staged.push(Staged { target: target.to_path_buf(), temp: temp.clone(), kind });
        Ok(temp)
    }

    /// Why `target` may not be written, if it may not.
    fn check(&self, target: &Path, kind: Kind) -> Result<()> {
        let name = target.display().to_string();
        if is_stdin(target) || target.file_name().is_none() {
            return Err(LabError::io(&name, "is not a file name to write to"));
        }
        let parent = parent_of(target);
        if !parent.is_dir() {
            return Err(LabError::io(
                &name,
                format!("its folder {} does not exist", parent.display()),
            ));
        }
        let resolved = resolve(target);
        for (input, id) in &self.inputs {
            let same_file = id.is_some() && file_id(&resolved) == *id;
            let inside = kind == Kind::Folder && input.starts_with(&resolved);
            if *input == resolved || same_file || inside {
                return Err(LabError::io(
                    &name,
                    format!("is also an input ({}); write to a new path", input.display()),
                ));
            }
        }
        if self.staged.iter().any(|s| resolve(&s.target) == resolved) {
            return Err(LabError::io(&name, "is named for two outputs"));
        }
        if let Ok(meta) = std::fs::symlink_metadata(target) {
            match (kind, meta.is_dir()) {
                (Kind::File, true) => {
                    return Err(LabError::io(&name, "is a folder; name a file to write"))
                }
                (Kind::Folder, false) => {
                    return Err(LabError::io(&name, "is a file; name a folder to write"))
                }
                _ => {}
            }
            if !self.force {
                return Err(LabError::io(&name, "already exists; pass --force to replace it"));
            }
        }
        Ok(())
    }

    /// `err` with a staged temporary path in it named by its output instead (what the user
    /// asked for, e.g. `run.model/model.safetensors: No space left on device`).
    pub fn named(&self, err: LabError) -> LabError {
        let LabError::Io { path, msg } = err else { return err };
        for s in &self.staged {
            if let Some(rest) = path.strip_prefix(&s.temp.display().to_string()) {
                return LabError::Io { path: format!("{}{rest}", s.target.display()), msg };
            }
        }
        LabError::Io { path, msg }
    }

    /// Move every staged output into place: each file is flushed to disk first, and an
    /// output replaced with `force` is moved aside until its successor is in place. If one
    /// rename fails, the ones before it are undone.
    pub fn commit(mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        for s in &staged {
            sync(&s.temp, s.kind).map_err(|e| LabError::io(s.target.display().to_string(), e))?;
        }
        let mut done: Vec<(usize, Option<PathBuf>)> = Vec::new();
        for (i, s) in staged.iter().enumerate() {
            match place(s) {
                Ok(aside) => done.push((i, aside)),
                Err(err) => {
                    for (j, aside) in done.into_iter().rev() {
                        let t = &staged[j];
                        let _ = remove(&t.target, t.kind);
                        if let Some(aside) = aside {
                            let _ = std::fs::rename(aside, &t.target);
                        }
                    }
                    for t in &staged[i..] {
                        let _ = remove(&t.temp, t.kind);
                    }
                    return Err(err);
                }
            }
        }
        for (i, aside) in done {
            if let Some(aside) = aside {
                let _ = remove(&aside, staged[i].kind);
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for s in &self.staged {
            let _ = remove(&s.temp, s.kind);
        }
    }
}

/// Rename a staged output into place; returns where a replaced output was moved aside.
fn place(s: &Staged) -> Result<Option<PathBuf>> {
    let name = s.target.display().to_string();
    let mut aside = None;
    if s.kind == Kind::Folder && s.target.exists() {
        let path = s.temp.with_extension("old");
        std::fs::rename(&s.target, &path).map_err(|e| LabError::io(&name, e))?;
        aside = Some(path);
    }
    if let Err(e) = std::fs::rename(&s.temp, &s.target) {
        if let Some(path) = &aside {
            let _ = std::fs::rename(path, &s.target);
        }
        return Err(LabError::io(&name, e));
    }
    Ok(aside)
}

fn sync(path: &Path, kind: Kind) -> std::io::Result<()> {
    match kind {
        Kind::File => std::fs::File::open(path)?.sync_all(),
        Kind::Folder => {
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::File::open(entry.path())?.sync_all()?;
                }
            }
            Ok(())
        }
    }
}

fn remove(path: &Path, kind: Kind) -> std::io::Result<()> {
    match kind {
        Kind::File => std::fs::remove_file(path),
        Kind::Folder => std::fs::remove_dir_all(path),
    }
}

/// The folder a path is in ("." for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A path with its links and `..` resolved as far as it exists (the rest appended).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(full) = std::fs::canonicalize(path) {
        return full;
    }
    let parent = std::fs::canonicalize(parent_of(path)).unwrap_or_else(|_| parent_of(path));
    match path.file_name() {
        Some(name) => parent.join(name),
        None => parent,
    }
}

/// (device, inode) of an existing file, so that hard links compare equal.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("alignlab-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reads_are_bounded_and_name_the_file() {
        let dir = scratch("bounded");
        let path = dir.join("a.txt");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap().len(), 10);
        let err = read_bounded(&path, 9).unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("over the limit"), "{err}");
        let err = read_bounded(&dir, 100).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let err = read_bounded(Path::new("/dev/zero"), 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_named_by_line_and_column() {
        let err = text_from_bytes(b"ok\nab\xffc\n".to_vec(), "x.jsonl").unwrap_err().to_string();
        assert_eq!(err, "x.jsonl, line 2: not UTF-8 text: invalid byte at column 3");
    }

    #[test]
    fn nothing_is_in_place_before_commit_and_nothing_is_left_on_drop() {
        let dir = scratch("drop");
        let target = dir.join("out.jsonl");
        let mut outputs = Outputs::new(false);
        let temp = outputs.file(&target).unwrap();
        std::fs::write(&temp, "half a record").unwrap();
        let folder = outputs.folder(&dir.join("run.model"), &["model.safetensors"]).unwrap();
        std::fs::write(folder.join("model.safetensors"), "x").unwrap();
        assert!(!target.exists());
        drop(outputs);
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
    }

    #[test]
    fn commit_puts_files_and_folders_in_place_and_force_replaces() {
        let dir = scratch("commit");
        let (file, folder) = (dir.join("m.jsonl"), dir.join("m.model"));
        for (force, text) in [(false, "first"), (true, "second")] {
            let mut outputs = Outputs::new(force);
            std::fs::write(outputs.file(&file).unwrap(), text).unwrap();
            std::fs::write(outputs.folder(&folder, &["w"]).unwrap().join("w"), text).unwrap();
            outputs.commit().unwrap();
            assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
            assert_eq!(std::fs::read_to_string(folder.join("w")).unwrap(), text);
        }
        assert_eq!(entries(&dir), ["m.jsonl", "m.model"]);
        let err = Outputs::new(false).file(&file).unwrap_err().to_string();
        assert!(err.contains("already exists; pass --force"), "{err}");
    }

    #[test]
    fn an_output_may_not_be_an_input_however_it_is_spelled() {
        let dir = scratch("inputs");
        let data = dir.join("d.jsonl");
        std::fs::write(&data, "{}").unwrap();
        let model = dir.join("run.model");
        std::fs::create_dir(&model).unwrap();
        std::fs::hard_link(&data, dir.join("link.jsonl")).unwrap();
        let spelled = dir.join(".").join("d.jsonl");
        for (target, folder) in [
            (spelled, false),
            (dir.join("link.jsonl"), false),
            (model.clone(), true),
            (dir.clone(), true),
        ] {
            let mut outputs = Outputs::new(true);
            outputs.input(&data).input(&model);
            let got = if folder { outputs.folder(&target, &[]) } else { outputs.file(&target) };
            let err = got.unwrap_err().to_string();
            assert!(err.contains("is also an input"), "{target:?}: {err}");
        }
        assert_eq!(std::fs::read_to_string(&data).unwrap(), "{}");
    }

    #[test]
    fn a_folder_is_not_a_file_and_a_missing_folder_is_named() {
        let dir = scratch("kinds");
        let err = Outputs::new(true).file(&dir).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let err = Outputs::new(true).file(&dir.join("no/such.jsonl")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn a_folder_of_other_things_is_never_replaced() {
        let dir = scratch("other");
        let model = dir.join("run.model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("notes.txt"), "mine").unwrap();
        let err = Outputs::new(true).folder(&model, &["model.safetensors"]).unwrap_err();
        assert!(err.to_string().contains("holds \"notes.txt\""), "{err}");
        assert_eq!(std::fs::read_to_string(model.join("notes.txt")).unwrap(), "mine");
    }
}
