//! One object-store interface over S3 and local paths.
//!
//! Every step addresses data by URI (`s3://bucket/key` or a local path, optionally `file://`), so
//! the same plan runs in a cluster (S3) and on one machine (`mira run`, local disk). The two
//! operations the work-unit protocol relies on are atomic: [`Storage::put`] never exposes a partial
//! object, and [`Storage::put_if_absent`] creates an object only if no object has that key.

mod local;
mod s3;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::plan::StorageConfig;

/// A parsed object address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, key: String },
    Local(PathBuf),
}

impl Location {
    pub fn parse(uri: &str) -> Result<Self> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::InvalidUri { uri: uri.into(), reason: "no bucket".into() });
            }
            return Ok(Location::S3 { bucket: bucket.into(), key: key.into() });
        }
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        if path.is_empty() {
            return Err(Error::InvalidUri { uri: uri.into(), reason: "empty path".into() });
        }
        if path.contains("://") {
            return Err(Error::InvalidUri {
                uri: uri.into(),
                reason: "unsupported scheme (use s3:// or a local path)".into(),
            });
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}

/// Joins URI segments with exactly one `/` between them.
pub fn join(base: &str, rel: &str) -> String {
    if base.is_empty() {
        return rel.to_string();
    }
    format!("{}/{}", base.trim_end_matches('/'), rel.trim_start_matches('/'))
}

/// The last path segment of a URI.
pub fn file_name(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub uri: String,
    pub size: u64,
    /// What changes when the object's bytes do: its S3 ETag, a local file's modification time
    /// (nanoseconds since the epoch). Empty when the store gives none.
    pub version: String,
}

/// A reader of one object's bytes, streamed.
pub type ByteReader = Box<dyn AsyncRead + Send + Unpin>;

/// The storage handle a step uses for every URI of its plan.
pub struct Storage {
    config: StorageConfig,
    s3: tokio::sync::OnceCell<s3::S3Store>,
}

impl Storage {
    pub fn new(config: StorageConfig) -> Self {
        Storage { config, s3: tokio::sync::OnceCell::new() }
    }

    async fn s3(&self) -> &s3::S3Store {
        self.s3.get_or_init(|| s3::S3Store::connect(&self.config)).await
    }

    /// Every object under `prefix` (a directory for local paths, a key prefix on S3), sorted by
    /// URI so that every worker sees the same order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut objects = match Location::parse(prefix)? {
            Location::S3 { bucket, key } => self.s3().await.list(&bucket, &key).await?,
            Location::Local(path) => local::list(&path).await?,
        };
        objects.sort_by(|a, b| a.uri.cmp(&b.uri));
        Ok(objects)
    }

    /// The whole object (for small objects: plans, results, commit markers).
    pub async fn get(&self, uri: &str) -> Result<Bytes> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.get(&bucket, &key).await,
            Location::Local(path) => local::get(&path).await,
        }
    }

    /// Like [`Storage::get`], but a missing object is `None` rather than an error.
    pub async fn get_opt(&self, uri: &str) -> Result<Option<Bytes>> {
        match self.get(uri).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and deserializes a JSON object.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, uri: &str) -> Result<T> {
        let bytes = self.get(uri).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::json(uri, e))
    }

    /// A streaming reader over the object; memory stays bounded whatever its size.
    pub async fn open_read(&self, uri: &str) -> Result<ByteReader> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.open_read(&bucket, &key).await,
            Location::Local(path) => local::open_read(&path).await,
        }
    }

    /// Writes (or replaces) an object atomically: readers see the old or the new bytes, never a part.
    pub async fn put(&self, uri: &str, data: Bytes) -> Result<()> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.put(&bucket, &key, data, false).await.map(|_| ()),
            Location::Local(path) => local::put(&path, &data).await,
        }
    }

    /// Serializes `value` as pretty JSON and writes it.
    pub async fn put_json<T: Serialize>(&self, uri: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::json(uri, e))?;
        self.put(uri, bytes.into()).await
    }

    /// Creates the object only if none exists at `uri` (S3 `If-None-Match: *`; a hard link on
    /// local disk). Returns whether this call created it. This is the commit primitive: among any
    /// number of concurrent callers exactly one gets `true`.
    pub async fn put_if_absent(&self, uri: &str, data: Bytes) -> Result<bool> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.put(&bucket, &key, data, true).await,
            Location::Local(path) => local::put_if_absent(&path, &data).await,
        }
    }

    /// Uploads a local file (multipart above the part size), atomically.
    pub async fn put_file(&self, uri: &str, file: &Path) -> Result<()> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.put_file(&bucket, &key, file).await,
            Location::Local(path) => local::put_file(&path, file).await,
        }
    }

    pub async fn delete(&self, uri: &str) -> Result<()> {
        match Location::parse(uri)? {
            Location::S3 { bucket, key } => self.s3().await.delete(&bucket, &key).await,
            Location::Local(path) => local::delete(&path).await,
        }
    }

    /// A local path holding the object's bytes: the path itself for local URIs, otherwise a copy
    /// downloaded once into `cache_dir` (for tokenizers and model files that libraries open by path).
    pub async fn local_copy(&self, uri: &str, cache_dir: &Path) -> Result<PathBuf> {
        match Location::parse(uri)? {
            Location::Local(path) => Ok(path),
            Location::S3 { bucket, key } => {
                let target = cache_dir.join(&bucket).join(&key);
                if tokio::fs::metadata(&target).await.is_err() {
                    self.download(uri, &target).await?;
                }
                Ok(target)
            }
        }
    }

    /// Writes the object's bytes to the local file `target`, atomically: a failed download never
    /// leaves a partial file there. The one way objects reach local disk.
    pub async fn download(&self, uri: &str, target: &Path) -> Result<()> {
        let mut reader = self.open_read(uri).await?;
        local::write_stream(target, &mut reader).await
    }
}
