//! Transfer role: syncs storage with the cloud through rclone.
