//! Local-disk backend: atomic writes by rename, conditional create by hard link.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{ByteReader, ObjectMeta};
use crate::error::{Error, Result};

/// A sibling temporary file (`tempfile`'s, unique per call so that concurrent writers never share
/// one, hidden so that listings skip it), removed when dropped: a write that fails (a full disk)
/// or is cancelled half-way leaves nothing behind.
struct Temp(tempfile::TempPath);

impl Temp {
    /// Creates it beside `path`, with its parent.
    async fn beside(path: &Path) -> Result<(Temp, tokio::fs::File)> {
        ensure_parent(path).await?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let created = tokio::task::spawn_blocking(move || {
            // Readable as `File::create` makes files (0666 less the umask), not owner-only as
            // tempfile's are: objects are read by whoever reads the store.
            tempfile::Builder::new()
                .prefix(&format!(".{name}.tmp-"))
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .tempfile_in(&parent)
                .map_err(|e| Error::io(&parent, e))
        })
        .await??;
        let (file, path) = created.into_parts();
        Ok((Temp(path), tokio::fs::File::from_std(file)))
    }

    /// Creates it, lets `fill` write it, then flushes and syncs: tokio's `File` reports a write's
    /// error only at the next flush, so without one a short write on a full disk passes as done.
    async fn write<F>(path: &Path, fill: F) -> Result<Temp>
    where
        F: AsyncFnOnce(&mut tokio::fs::File) -> std::io::Result<()>,
    {
        let (tmp, mut file) = Temp::beside(path).await?;
        fill(&mut file).await.map_err(|e| Error::io(&tmp.0, e))?;
        file.flush().await.map_err(|e| Error::io(&tmp.0, e))?;
        file.sync_all().await.map_err(|e| Error::io(&tmp.0, e))?;
        Ok(tmp)
    }

    async fn rename_to(self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || self.0.persist(&path).map_err(|e| Error::io(&path, e.error))).await?
    }
}

async fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| Error::io(parent, e))?;
        }
    }
    Ok(())
}

async fn write_temp(path: &Path, data: &[u8]) -> Result<Temp> {
    Temp::write(path, async |file| file.write_all(data).await).await
}

/// Lists a directory recursively, a single file, or (like an S3 key prefix) the entries of the
/// parent directory whose names start with the last segment.
pub async fn list(root: &Path) -> Result<Vec<ObjectMeta>> {
    match tokio::fs::metadata(root).await {
        Ok(meta) if meta.is_file() => return Ok(vec![object(root, &meta)]),
        Ok(_) => return walk(root.to_path_buf(), None).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(root, e)),
    }
    let (Some(parent), Some(prefix)) = (root.parent(), root.file_name()) else { return Ok(Vec::new()) };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    match tokio::fs::metadata(parent).await {
        Ok(meta) if meta.is_dir() => walk(parent.to_path_buf(), Some(&prefix.to_string_lossy())).await,
        _ => Ok(Vec::new()),
    }
}

fn object(path: &Path, meta: &std::fs::Metadata) -> ObjectMeta {
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    ObjectMeta {
        uri: path.to_string_lossy().into_owned(),
        size: meta.len(),
        version: modified.map(|d| d.as_nanos().to_string()).unwrap_or_default(),
    }
}

/// Files under `dir`, recursively; at the top level only names starting with `prefix`.
async fn walk(dir: PathBuf, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir, prefix)];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(|e| Error::io(&dir, e))?;
        while let Some(entry) = entries.next_entry().await.map_err(|e| Error::io(&dir, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of in-flight writes are not objects yet.
            if name.starts_with('.') || prefix.is_some_and(|p| !name.starts_with(p)) {
                continue;
            }
            let path = entry.path();
            let meta = match entry.metadata().await {
                Ok(meta) => meta,
                // Removed since the directory was read (a released claim, say): not an object now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            if meta.is_dir() {
                stack.push((path, None));
            } else {
                out.push(object(&path, &meta));
            }
        }
    }
    Ok(out)
}

pub async fn get(path: &Path) -> Result<Bytes> {
    match tokio::fs::read(path).await {
        Ok(data) => Ok(data.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(path.to_string_lossy().into_owned())),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub async fn open_read(path: &Path) -> Result<ByteReader> {
    match tokio::fs::File::open(path).await {
        Ok(file) => Ok(Box::new(tokio::io::BufReader::with_capacity(1 << 20, file))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(path.to_string_lossy().into_owned())),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub async fn put(path: &Path, data: &[u8]) -> Result<()> {
    write_temp(path, data).await?.rename_to(path).await
}

pub async fn put_if_absent(path: &Path, data: &[u8]) -> Result<bool> {
    let tmp = write_temp(path, data).await?;
    // link(2) fails with EEXIST when the target exists: an atomic create-if-absent. The
    // temporary name is removed when `tmp` is dropped.
    match tokio::fs::hard_link(&tmp.0, path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Copies a file into place, synced before it is renamed there, so that an object is never
/// seen (or, after a crash, found) with part of its bytes.
pub async fn put_file(path: &Path, file: &Path) -> Result<()> {
    let (tmp, _) = Temp::beside(path).await?;
    // One blocking copy (copy_file_range where the kernel has it), which reports every error.
    tokio::fs::copy(file, &tmp.0).await.map_err(|e| Error::io(file, e))?;
    let copy = tokio::fs::File::open(&tmp.0).await.map_err(|e| Error::io(&tmp.0, e))?;
    copy.sync_all().await.map_err(|e| Error::io(&tmp.0, e))?;
    tmp.rename_to(path).await
}

pub async fn write_stream(path: &Path, reader: &mut (dyn AsyncRead + Send + Unpin)) -> Result<()> {
    Temp::write(path, async |file| tokio::io::copy(reader, file).await.map(drop)).await?.rename_to(path).await
}

pub async fn delete(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process that runs a test's body under a file size cap.
    const CHILD: &str = "MIRA_TEST_FILE_SIZE_CAP";

    /// Runs the test named `name` again, alone, in a child process whose files cannot grow past
    /// `bytes` (a full disk: `mira_testkit::full_disk`), and asserts that it passed there.
    fn in_a_child_with_file_size_cap(name: &str, bytes: u64) {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(CHILD, "1");
        mira_testkit::full_disk::cap_file_size(&mut command, bytes);
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A write that meets a full disk half-way is an error, leaves no object and no temporary
    /// file, whatever the writing call; before, tokio's `File` kept the error of a short write
    /// to the next flush, which never came, and the partial file was moved into place.
    #[tokio::test]
    async fn a_write_that_meets_a_full_disk_fails_and_leaves_nothing() {
        if std::env::var_os(CHILD).is_none() {
            return in_a_child_with_file_size_cap(
                "storage::local::tests::a_write_that_meets_a_full_disk_fails_and_leaves_nothing",
                16 * 1024,
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 64 * 1024];
        let source = dir.path().join("source");
        std::fs::write(&source, &big[..8 * 1024]).unwrap();
        let path = |name: &str| dir.path().join("out").join(name);

        let error = put(&path("put"), &big).await.unwrap_err().to_string();
        assert!(error.contains("File too large"), "{error}");
        assert!(put_if_absent(&path("commit.json"), &big).await.is_err());
        assert!(write_stream(&path("stream"), &mut &big[..]).await.is_err());
        // What fits is written whole.
        put(&path("small"), b"{}").await.unwrap();
        put_file(&path("copy"), &source).await.unwrap();
        // With the mode `File::create` gives (tempfile's own are owner-only).
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&path("small")), mode(&source));
        let mut left: Vec<String> = std::fs::read_dir(path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["copy", "small"]);
    }
}
