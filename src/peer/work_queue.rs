//! The transfer pool's queue: large objects and batches of small ones wait in two
//! lanes, each bounded, and a worker takes from the lane it prefers first. One
//! worker preferring small objects creates their files while the others read
//! large objects, instead of every worker reading large objects first and then
//! all of them creating small files at the end, where they contend for the same
//! directories and, on a slow filesystem (a journal-less ext4 skipping recently
//! freed inodes, network storage), leave the transfer idle.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Which lane an item goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// One large object.
    Large,
    /// A batch of small objects.
    Small,
}

struct Lanes<T> {
    large: VecDeque<T>,
    small: VecDeque<T>,
    closed: bool,
}

impl<T> Lanes<T> {
    fn lane(&mut self, lane: Lane) -> &mut VecDeque<T> {
        match lane {
            Lane::Large => &mut self.large,
            Lane::Small => &mut self.small,
        }
    }
}

/// A two-lane bounded queue shared by the producer and the workers.
pub struct WorkQueue<T> {
    lanes: Mutex<Lanes<T>>,
    changed: Condvar,
    /// Items each lane holds at most.
    cap: usize,
}

impl<T> WorkQueue<T> {
    /// An open queue holding at most `cap` items per lane.
    pub fn new(cap: usize) -> WorkQueue<T> {
        WorkQueue {
            lanes: Mutex::new(Lanes {
                large: VecDeque::new(),
                small: VecDeque::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Adds `item` to `lane` unless that lane is full (then it is handed back).
    /// `Ok(false)`: the queue is closed and dropped it.
    pub fn try_push(&self, lane: Lane, item: T) -> Result<bool, T> {
        let Ok(mut l) = self.lanes.lock() else {
            return Ok(false);
        };
        if l.closed {
            return Ok(false);
        }
        if l.lane(lane).len() >= self.cap {
            return Err(item);
        }
        l.lane(lane).push_back(item);
        self.changed.notify_all();
        Ok(true)
    }

    /// Adds `item` to `lane`, waiting while that lane is full. A closed queue
    /// drops it and returns false.
    pub fn push(&self, lane: Lane, item: T) -> bool {
        let Ok(mut l) = self.lanes.lock() else {
            return false;
        };
        loop {
            if l.closed {
                return false;
            }
            if l.lane(lane).len() < self.cap {
                l.lane(lane).push_back(item);
                self.changed.notify_all();
                return true;
            }
            l = match self.changed.wait(l) {
                Ok(l) => l,
                Err(_) => return false,
            };
        }
    }

    /// The next item, from `prefer`'s lane when it has one, else from the other;
    /// waits while both are empty. `None` once the queue is closed and empty.
    pub fn pop(&self, prefer: Lane) -> Option<T> {
        let mut l = self.lanes.lock().ok()?;
        let other = match prefer {
            Lane::Large => Lane::Small,
            Lane::Small => Lane::Large,
        };
        loop {
            if let Some(item) = l.lane(prefer).pop_front() {
                self.changed.notify_all();
                return Some(item);
            }
            if let Some(item) = l.lane(other).pop_front() {
                self.changed.notify_all();
                return Some(item);
            }
            if l.closed {
                return None;
            }
            l = self.changed.wait(l).ok()?;
        }
    }

    /// Closes the queue: it takes no more items; workers still get what is queued,
    /// then `None`.
    pub fn close(&self) {
        if let Ok(mut l) = self.lanes.lock() {
            l.closed = true;
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn each_worker_takes_its_lane_first_then_the_other() {
        let q = WorkQueue::new(2);
        assert_eq!(q.try_push(Lane::Large, 1), Ok(true));
        assert_eq!(q.try_push(Lane::Large, 2), Ok(true));
        assert_eq!(q.try_push(Lane::Large, 3), Err(3), "the large lane is full");
        assert_eq!(
            q.try_push(Lane::Small, 10),
            Ok(true),
            "the small lane has its own room"
        );
        assert_eq!(q.pop(Lane::Small), Some(10));
        assert_eq!(
            q.pop(Lane::Small),
            Some(1),
            "no small item left: a large one"
        );
        assert_eq!(q.pop(Lane::Large), Some(2));
    }

    #[test]
    fn a_full_lane_waits_for_room_and_close_wakes_everyone() {
        let q = Arc::new(WorkQueue::new(1));
        assert!(q.push(Lane::Small, 1));
        let producer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.push(Lane::Small, 2))
        };
        assert_eq!(q.pop(Lane::Large), Some(1));
        assert!(
            producer.join().unwrap(),
            "the second push went in once there was room"
        );
        assert_eq!(q.pop(Lane::Large), Some(2));
        let worker = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.pop(Lane::Small))
        };
        q.close();
        assert_eq!(worker.join().unwrap(), None);
        assert!(!q.push(Lane::Large, 3), "a closed queue takes nothing");
        let q = WorkQueue::new(2);
        assert!(q.push(Lane::Large, 4));
        q.close();
        assert_eq!(q.try_push(Lane::Small, 5), Ok(false));
        assert_eq!(
            q.pop(Lane::Small),
            Some(4),
            "what was queued before closing is still served"
        );
        assert_eq!(q.pop(Lane::Small), None);
    }
}
