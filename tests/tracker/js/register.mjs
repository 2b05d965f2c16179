// `node --import ./register.mjs ...` installs the werift hook before any import runs.
import { register } from 'node:module'

register('./hooks.mjs', import.meta.url)
