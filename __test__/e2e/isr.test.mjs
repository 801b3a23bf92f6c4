// The incremental cache end to end on examples/isr with the repo's Next: the suite is in
// isr-suite.mjs (what it shows, and how to run it against Next's built-in handler).
import { defineIsrSuite } from './isr-suite.mjs'

defineIsrSuite()
