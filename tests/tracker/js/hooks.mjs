// Node module-resolution hook: route `webrtc-polyfill` to ./webrtc-shim.mjs (werift).
const shim = new URL('./webrtc-shim.mjs', import.meta.url).href

export async function resolve (specifier, context, next) {
  if (specifier === 'webrtc-polyfill') return { url: shim, shortCircuit: true }
  return next(specifier, context)
}
