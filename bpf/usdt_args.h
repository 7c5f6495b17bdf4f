/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File: usdt_args.h
 *
 * usdt_args(ctx, out, n): a probe's first n arguments, as libbpf's
 * bpf_usdt_arg() reads them (same specs, same conversions, 0 for an argument
 * that is missing or cannot be read), but with one spec lookup for all of
 * them and no helper call for a register argument.
 *
 * Why: libbpf 1.1's BPF_USDT() calls bpf_usdt_arg() once per argument, and
 * each call looks the site's spec up again (attach cookie, array lookup) and
 * copies the register out of pt_regs with bpf_probe_read_kernel(): measured
 * with bpf_stats, most of a hot probe's program (syncmap.bpf.c) went there.
 * A register is read here straight from the context, at a constant offset
 * per register (the verifier allows no other context access).  libbpf 1.1
 * cannot parse scaled-index operands anyway, so register, constant and
 * register-plus-offset are all the kinds there are.
 *
 * x86-64 only (the offsets are struct pt_regs's there); elsewhere it falls
 * back to bpf_usdt_arg().
 */
#ifndef SYNCMAP_BPF_USDT_ARGS_H_
#define SYNCMAP_BPF_USDT_ARGS_H_

#include <bpf/usdt.bpf.h>

#if defined(__TARGET_ARCH_x86)

/* One case per register, each load by inline assembly at a literal offset:
 * written in C, clang merges the cases into one load at a computed offset,
 * which the verifier rejects (modified context pointer). */
#define USDT_REG(field, off)                                                  \
	case off:                                                             \
		asm volatile("%0 = *(u64 *)(%1 + " #off ")" : "=r"(*val) : "r"(ctx)); \
		return true;

#define USDT_REG_AT(field, off) \
	_Static_assert(__builtin_offsetof(struct pt_regs, field) == off, "pt_regs." #field);
USDT_REG_AT(r15, 0)
USDT_REG_AT(r14, 8)
USDT_REG_AT(r13, 16)
USDT_REG_AT(r12, 24)
USDT_REG_AT(bp, 32)
USDT_REG_AT(bx, 40)
USDT_REG_AT(r11, 48)
USDT_REG_AT(r10, 56)
USDT_REG_AT(r9, 64)
USDT_REG_AT(r8, 72)
USDT_REG_AT(ax, 80)
USDT_REG_AT(cx, 88)
USDT_REG_AT(dx, 96)
USDT_REG_AT(si, 104)
USDT_REG_AT(di, 112)
USDT_REG_AT(ip, 128)
USDT_REG_AT(sp, 152)
#undef USDT_REG_AT

/* The register at byte offset `off` of struct pt_regs (what libbpf records
 * in the spec); false for an offset that is no register's. */
static __always_inline bool usdt_reg(struct pt_regs *ctx, short off, unsigned long *val)
{
	switch (off) {
	USDT_REG(r15, 0)
	USDT_REG(r14, 8)
	USDT_REG(r13, 16)
	USDT_REG(r12, 24)
	USDT_REG(bp, 32)
	USDT_REG(bx, 40)
	USDT_REG(r11, 48)
	USDT_REG(r10, 56)
	USDT_REG(r9, 64)
	USDT_REG(r8, 72)
	USDT_REG(ax, 80)
	USDT_REG(cx, 88)
	USDT_REG(dx, 96)
	USDT_REG(si, 104)
	USDT_REG(di, 112)
	USDT_REG(ip, 128)
	USDT_REG(sp, 152)
	}
	return false;
}

#undef USDT_REG

/* Fills out[0..n) (n a constant); see the top of this file. */
static __always_inline void usdt_args(struct pt_regs *ctx, long *out, const int n)
{
	struct __bpf_usdt_arg_spec *as;
	struct __bpf_usdt_spec *spec;
	unsigned long val;
	int spec_id, i;

	for (i = 0; i < n; i++)
		out[i] = 0;
	spec_id = __bpf_usdt_spec_id(ctx);
	if (spec_id < 0)
		return;
	spec = bpf_map_lookup_elem(&__bpf_usdt_specs, &spec_id);
	if (!spec)
		return;
#pragma unroll
	for (i = 0; i < n && i < BPF_USDT_MAX_ARG_CNT; i++) {
		if (i >= spec->arg_cnt)
			break;
		as = &spec->args[i];
		switch (as->arg_type) {
		case BPF_USDT_ARG_CONST:
			val = as->val_off;
			break;
		case BPF_USDT_ARG_REG:
			if (!usdt_reg(ctx, as->reg_off, &val))
				continue;
			break;
		case BPF_USDT_ARG_REG_DEREF:
			if (!usdt_reg(ctx, as->reg_off, &val) ||
			    bpf_probe_read_user(&val, sizeof(val), (void *)val + as->val_off))
				continue;
			break;
		default:
			continue;
		}
		/* 1, 2 or 4 bytes to 8, sign-extended if signed (as libbpf). */
		val <<= as->arg_bitshift;
		if (as->arg_signed)
			val = ((long)val) >> as->arg_bitshift;
		else
			val = val >> as->arg_bitshift;
		out[i] = val;
	}
}

#else /* !__TARGET_ARCH_x86 */

static __always_inline void usdt_args(struct pt_regs *ctx, long *out, const int n)
{
	int i;

	for (i = 0; i < n; i++)
		bpf_usdt_arg(ctx, i, &out[i]);
}

#endif

#endif /* SYNCMAP_BPF_USDT_ARGS_H_ */
