// Stands in for the `webrtc-polyfill` package (which loads the native node-datachannel
// module that cannot be built here) with werift, a pure-TypeScript WebRTC stack.
//
// Two W3C behaviours simple-peer relies on differ in werift, so they are adapted here:
// session descriptions are built from an init dict ({type, sdp}) and stay writable
// (simple-peer rewrites `offer.sdp` before setLocalDescription). werift then refuses
// the munged SDP, as the W3C spec allows; simple-peer's only edit without trickle is
// dropping `a=ice-options:trickle`, so the shim applies the description werift created.
import * as werift from 'werift'

export class RTCSessionDescription {
  constructor (init = {}) {
    this.type = init.type
    this.sdp = init.sdp
  }

  toJSON () { return { type: this.type, sdp: this.sdp } }
}

export class RTCPeerConnection extends werift.RTCPeerConnection {
  async createOffer (...args) {
    const d = await super.createOffer(...args)
    return new RTCSessionDescription({ type: d.type, sdp: d.sdp })
  }

  async setLocalDescription (desc) {
    if (desc?.type === 'offer' && this.lastCreatedOffer) {
      desc = { type: 'offer', sdp: this.lastCreatedOffer.sdp }
    } else if (desc?.type === 'answer' && this.lastCreatedAnswer) {
      desc = { type: 'answer', sdp: this.lastCreatedAnswer.sdp }
    }
    return super.setLocalDescription(desc)
  }

  // The standard promise form takes no callback; werift's optional selector argument
  // makes simple-peer mistake it for the legacy callback API.
  getStats () {
    return super.getStats()
  }

  async createAnswer (...args) {
    const d = await super.createAnswer(...args)
    return new RTCSessionDescription({ type: d.type, sdp: d.sdp })
  }
}

export const RTCIceCandidate = werift.RTCIceCandidate
export default { RTCPeerConnection, RTCSessionDescription, RTCIceCandidate }
