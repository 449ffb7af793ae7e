/* The per-thread message hook: see msghook.h. */
#include <config.h>

#include "msghook.h"

__thread backend_message_fn backend_message_hook;
