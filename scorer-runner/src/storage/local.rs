//! Local-disk backend: atomic writes by rename, conditional create by hard link.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{ByteReader, ObjectMeta};
use crate::error::{Error, Result};

/// A sibling temporary path, unique per call, so concurrent writers never share one.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()))
}

async fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| Error::io(parent, e))?;
        }
    }
    Ok(())
}

async fn write_temp(path: &Path, data: &[u8]) -> Result<PathBuf> {
    ensure_parent(path).await?;
    let tmp = temp_path(path);
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
    file.write_all(data).await.map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().await.map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Lists a directory recursively, a single file, or (like an S3 key prefix) the entries of the
/// parent directory whose names start with the last segment.
pub async fn list(root: &Path) -> Result<Vec<ObjectMeta>> {
    match tokio::fs::metadata(root).await {
        Ok(meta) if meta.is_file() => {
            return Ok(vec![ObjectMeta { uri: root.to_string_lossy().into_owned(), size: meta.len() }])
        }
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
            let meta = entry.metadata().await.map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                stack.push((path, None));
            } else {
                out.push(ObjectMeta { uri: path.to_string_lossy().into_owned(), size: meta.len() });
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
    let tmp = write_temp(path, data).await?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| Error::io(path, e))
}

pub async fn put_if_absent(path: &Path, data: &[u8]) -> Result<bool> {
    let tmp = write_temp(path, data).await?;
    // link(2) fails with EEXIST when the target exists: an atomic create-if-absent.
    let linked = tokio::fs::hard_link(&tmp, path).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Copies a file into place, synced before it is renamed there, so that an object is never
/// seen (or, after a crash, found) with part of its bytes.
pub async fn put_file(path: &Path, file: &Path) -> Result<()> {
    ensure_parent(path).await?;
    let tmp = temp_path(path);
    tokio::fs::copy(file, &tmp).await.map_err(|e| Error::io(file, e))?;
    let copy = tokio::fs::File::open(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
    copy.sync_all().await.map_err(|e| Error::io(&tmp, e))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| Error::io(path, e))
}

pub async fn write_stream(path: &Path, reader: &mut (dyn AsyncRead + Send + Unpin)) -> Result<()> {
    ensure_parent(path).await?;
    let tmp = temp_path(path);
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
    tokio::io::copy(reader, &mut file).await.map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().await.map_err(|e| Error::io(&tmp, e))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| Error::io(path, e))
}

pub async fn delete(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
