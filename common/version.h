#ifndef HW_COMMON_VERSION_H
#define HW_COMMON_VERSION_H

/* One version for every program of the tree: they are built and shipped together. */
#define HW_VERSION "0.1.0-dev"

#endif
