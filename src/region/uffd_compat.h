// region/uffd_compat.h — kernel UAPI the uffd tracker needs but older
// headers lack.
//
// Debian 12 ships linux-libc-dev 6.1; async userfaultfd write-protect and
// the PAGEMAP_SCAN ioctl arrived in Linux 6.7. The values below are the
// kernel's ABI (include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h
// of 6.7+), so they are correct whichever header provided them. Each block
// is guarded so newer headers win. Whether the running kernel supports them
// is decided at run time (UffdTrackerSupported()), never here.
#pragma once

#include <linux/fs.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

// Write-protect page-table entries that are still empty (pte markers), so a
// never-touched anonymous page also counts as protected.
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
// A write to a write-protected page is resolved by the kernel itself (it
// just clears the protection) instead of being queued for a handler thread.
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#ifndef PAGEMAP_SCAN

// Page categories, used both as masks in pm_scan_arg and in the
// `categories` of each returned page_region.
#define PAGE_IS_WPALLOWED (1 << 0)  // async write-protect is enabled here
#define PAGE_IS_WRITTEN (1 << 1)    // written since it was last write-protected
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

// One output run: [start, end) whose pages all have `categories`.
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};

// pm_scan_arg.flags
#define PM_SCAN_WP_MATCHING (1 << 0)    // write-protect the pages reported
#define PM_SCAN_CHECK_WPASYNC (1 << 1)  // fail on a VMA without async uffd-wp

struct pm_scan_arg {
  __u64 size;   // sizeof(struct pm_scan_arg)
  __u64 flags;  // PM_SCAN_*
  __u64 start;  // scanned range [start, end)
  __u64 end;
  __u64 walk_end;             // out: where the walk stopped (== end when done)
  __u64 vec;                  // struct page_region* output array
  __u64 vec_len;              // its length in entries
  __u64 max_pages;            // 0 = no limit on reported pages
  __u64 category_inverted;    // categories that match when clear
  __u64 category_mask;        // all of these must match
  __u64 category_anyof_mask;  // at least one of these must match
  __u64 return_mask;          // categories copied into page_region
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

#endif  // PAGEMAP_SCAN
